"""allscan: screen peripheral blood smear images for Acute Lymphoblastic Leukemia.

The Python API (:mod:`allscan.api`): ``allscan.predict``, ``allscan.load``, ``allscan.read_results``
and ``allscan.COLUMNS``. They are imported on first use, so ``import allscan`` stays light and
TensorFlow loads only with the models.
"""

import importlib
import importlib.util
import sys

__version__ = "0.1.0"

__all__ = ["COLUMNS", "Screener", "load", "predict", "read_results"]

_API = {"Screener": "allscan.api", "load": "allscan.api", "predict": "allscan.api",
        "read_results": "allscan.api", "COLUMNS": "allscan.results"}


def _register_lazily(name: str) -> None:
    """Put module ``name`` in ``sys.modules`` now and run it on first use.

    ``allscan.predict`` names both the API function and a module. Importing the module
    the usual way binds it over the package attribute, so that ``allscan.predict(...)``
    would call a module; a module already in ``sys.modules`` is never bound that way.
    (A dotted target such as ``monkeypatch.setattr("allscan.predict.x", ...)`` therefore
    reaches the function: patch ``sys.modules["allscan.predict"]`` instead.)
    """
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)


_register_lazily("allscan.predict")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'allscan' has no attribute {name!r}")
