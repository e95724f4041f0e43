"""Where allscan finds its shipped models and keeps training runs."""

import os
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


def default_models_dir() -> Path:
    """``$ALLSCAN_MODELS``, else ``./models`` when it has a manifest, else the models shipped with the source."""
    env = os.environ.get("ALLSCAN_MODELS")
    if env:
        return Path(env)
    local = Path("models")
    if (local / "manifest.json").is_file():
        return local
    return REPO_MODELS


def default_runs_dir() -> Path:
    """Training checkpoints live outside the repository: ``$ALLSCAN_RUNS`` or ``~/allscan-runs``."""
    return Path(os.environ.get("ALLSCAN_RUNS", Path.home() / "allscan-runs"))
