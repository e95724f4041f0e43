"""Batch jobs over image files: per-image preparation and scoring (``job``), committing results to the
store (``committer``), the ``predict`` run (``batch``), its output files (``outputs``), watching a folder
(``watch``), checks made before the models load (``preflight``) and the engines that run a job.
"""
