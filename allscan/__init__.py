"""allscan: screen peripheral blood smear images for Acute Lymphoblastic Leukemia.

The Python API (:mod:`allscan.api`): ``allscan.predict``, ``allscan.load``, ``allscan.read_results``
and ``allscan.COLUMNS``. They are imported on first use, so ``import allscan`` stays light and
TensorFlow loads only with the models.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["COLUMNS", "Screener", "load", "predict", "read_results"]

_API = {"Screener": "allscan.api", "load": "allscan.api", "predict": "allscan.api",
        "read_results": "allscan.api", "COLUMNS": "allscan.results.types"}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'allscan' has no attribute {name!r}")
