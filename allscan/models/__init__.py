"""What ships and how it loads: the manifest, the registry of architectures with their input sizes and
preprocessing, calibration, model files (float16 save, checksums), the ensemble's forward pass and Grad-CAM.
"""
