"""Where allscan finds its shipped models, keeps training runs and puts the files beside an output.

This module imports nothing heavy, so the command line can check paths before TensorFlow loads.
"""

import os
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"

OUTPUT_SUFFIXES = (".csv", ".xlsx")


def path_text(path: Path | str) -> str:
    """``path`` as text that every output and the results store can hold: as it is, but for the bytes of a
    name that are not UTF-8 (written in another system's encoding, e.g. Latin-1 from an old share), which
    show as ``\\xNN``."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def real_path_text(path: Path | str) -> str:
    """The file ``path`` names, as :func:`path_text` of its absolute path with every link resolved: one spelling
    for a file however a run reached it (relative to another folder, through a link)."""
    return path_text(os.path.realpath(path))


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


def check_output_suffix(out: Path) -> None:
    """Raise ValueError unless ``out`` ends in a supported suffix."""
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"unknown output suffix {Path(out).suffix!r} for {out}; use .csv or .xlsx")


def sidecar_path(out: Path) -> Path:
    """The CSV's run metadata: ``results.csv`` → ``results.csv.run.json``."""
    return Path(str(out) + ".run.json")


def specimens_path(out: Path) -> Path:
    """The CSV's specimens table: ``results.csv`` → ``results.csv.specimens.csv``."""
    return Path(str(out) + ".specimens.csv")


def cells_path(out: Path) -> Path:
    """The CSV's cell table: ``results.csv`` → ``results.csv.cells.csv``."""
    return Path(str(out) + ".cells.csv")


def store_path_for(out: Path) -> Path:
    """The store beside an output file: ``results.xlsx`` → ``results.xlsx.allscan.sqlite``."""
    return Path(str(out) + ".allscan.sqlite")
