"""Making and checking models: datasets and augmentation, training, evaluation and metrics, plots,
tuning the operating point, shipping a run, fitting the domain reference and site profiles.
"""
