"""Results as pandas DataFrames: built from results, or read back from a CSV, an Excel workbook or a store.

Every frame has exactly the columns of :data:`allscan.results.types.COLUMNS`, in order, with
the same dtypes whatever it came from: text as strings (empty when missing), sizes and
agreement as nullable integers, probabilities as floats (NaN for error rows) and
``review`` as a nullable boolean.
"""

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from allscan.results.types import COLUMNS, ImageResult
from allscan.results.tables import restore

STORE_SUFFIX = ".allscan.sqlite"
_INTEGER = ("width", "height", "agreement")
_FLOAT = tuple(c for c in COLUMNS if c.startswith("p_all"))


def results_frame(results: Iterable[ImageResult]) -> pd.DataFrame:
    """One row per result, in the order given."""
    return _typed(pd.DataFrame([r.row() for r in results], columns=list(COLUMNS), dtype=object))


def read_results(path: Path | str, digest: str | None = None) -> pd.DataFrame:
    """Read a results CSV, Excel workbook or results store (``*.allscan.sqlite``) into a DataFrame.

    A store may hold results of several model sets: ``digest`` picks one [default: the
    set whose row was recorded last]. Rows come in the file's order (a store's: by path).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not a results file: unknown suffix, or columns other than the schema's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.name.lower()
    if name.endswith(STORE_SUFFIX):
        return _read_store(path, digest)
    if name.endswith(".csv"):
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    elif name.endswith(".xlsx"):
        raw = pd.read_excel(path, sheet_name="Results", dtype=object)
    else:
        raise ValueError(f"cannot read {path}: expected a .csv, .xlsx or {STORE_SUFFIX} file")
    if list(raw.columns) != list(COLUMNS):
        raise ValueError(f"{path} is not an allscan results file: its columns are not {', '.join(COLUMNS)}")
    return _typed(raw)


def _read_store(path: Path, digest: str | None) -> pd.DataFrame:
    from allscan.results.store import ResultStore, latest_digest

    digest = digest or latest_digest(path)
    if digest is None:
        return results_frame([])
    with ResultStore(path, digest, writer=False) as store:
        return results_frame(store.results())


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    typed = pd.DataFrame(index=range(len(frame)))
    for column in COLUMNS:
        values = [_missing_as_none(v) for v in frame[column]]
        if column in _INTEGER:
            typed[column] = pd.array([None if v is None else int(v) for v in values], dtype="Int64")
        elif column in _FLOAT:
            typed[column] = pd.array([None if v is None else float(v) for v in values], dtype="float64")
        elif column == "review":
            typed[column] = pd.array([_boolean(v) for v in values], dtype="boolean")
        else:
            typed[column] = [restore(str(v)) if v is not None else "" for v in values]
    return typed


def _missing_as_none(value: object) -> object:
    if value is None or (isinstance(value, str) and value == "") or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _boolean(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return {"true": True, "false": False}[str(value).lower()]
