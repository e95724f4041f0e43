"""Results as pandas DataFrames: built from results, or read back from a CSV, an Excel workbook or a store.

Every results frame has exactly the columns of :data:`allscan.results.types.COLUMNS`, in order,
with the same dtypes whatever it came from: text as strings (empty when missing), sizes,
agreement and cell counts as nullable integers, probabilities and ``blast_pct`` as floats (NaN
for error rows) and ``review`` as a nullable boolean. A cells frame has the columns of
:data:`~allscan.results.types.CELL_COLUMNS`: one row per white cell.
"""

import math
import sqlite3
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from allscan.models.registry import MODEL_NAMES
from allscan.paths import cells_path, specimens_path
from allscan.results.tables import restore
from allscan.results.types import (CELL_COLUMNS, COLUMNS, DOMAIN_IN, DOMAIN_OUT, SPECIMEN_COLUMNS, VERDICT_ALL,
                                   VERDICT_ERROR, VERDICT_NORMAL, ImageResult, SpecimenSummary)

STORE_SUFFIX = ".allscan.sqlite"
_INTEGER = ("width", "height", "agreement", "tiles", "cells", "blasts")
_FLOAT = tuple(c for c in COLUMNS if c.startswith("p_all"))
_PERCENT = ("blast_pct",)
_POSITIVE = ("scale", "domain_score")
"""Real numbers of no fixed range: the rescale factor (above 0) and the guard's score (0 or more)."""
_EARLIER_COLUMNS = (COLUMNS[:COLUMNS.index("specimen")], COLUMNS[:COLUMNS.index("cells")])
"""The columns of results files written before specimens and before cells: the schema has only grown at its end,
so such a file reads with the later columns empty."""
_CHOICES = {"verdict": (VERDICT_ALL, VERDICT_NORMAL, VERDICT_ERROR), "domain": ("", DOMAIN_IN, DOMAIN_OUT)}
_HEADER_ROWS = 1
"""Rows above the first result in a CSV or the Results sheet: row numbers in messages count them, as a
spreadsheet shows them."""


class ResultsFileError(ValueError):
    """A file that is not an allscan results file, or holds a value the schema does not allow; the message
    names the file and, for a value, its row and column."""


def results_frame(results: Iterable[ImageResult]) -> pd.DataFrame:
    """One row per result, in the order given."""
    return _typed(pd.DataFrame([r.row() for r in results], columns=list(COLUMNS), dtype=object))


def cells_frame(results: Iterable[ImageResult]) -> pd.DataFrame:
    """One row per white cell of the results, in the order given (none for images whose cells were not looked
    for)."""
    rows = [row for result in results for row in result.cell_rows()]
    return _typed_cells(pd.DataFrame(rows, columns=list(CELL_COLUMNS), dtype=object))


def specimens_frame(specimens: Iterable[SpecimenSummary]) -> pd.DataFrame:
    """One row per specimen, columns :data:`~allscan.results.types.SPECIMEN_COLUMNS`."""
    return _typed_specimens(pd.DataFrame([s.row() for s in specimens], columns=list(SPECIMEN_COLUMNS), dtype=object))


def read_results(path: Path | str, digest: str | None = None, specimens: bool = False, cells: bool = False
                 ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Read a results CSV, Excel workbook or results store (``*.allscan.sqlite``) into a DataFrame.

    A store may hold results of several model sets: ``digest`` picks one [default: the
    set whose row was recorded last]. Rows come in the file's order (a store's: by path).
    A CSV or workbook may have been edited by hand, so every value is checked: probabilities
    in [0, 1], sizes positive, agreement 0 to the number of models, cell counts not negative,
    ``blast_pct`` in [0, 100], ``review`` true, false or empty, verdict and domain among their
    values. A file written before allscan had specimens or cells reads with those columns empty.

    With ``cells`` it returns ``(results, cells)``, as :meth:`allscan.Screener.predict` does: the
    cells frame (:data:`~allscan.results.types.CELL_COLUMNS`, one row per white cell, checked
    likewise) from the ``<out>.cells.csv`` beside a CSV, the ``Cells`` sheet of a workbook, or the
    store. With ``specimens`` it reads the specimens table instead (one row per specimen,
    :data:`~allscan.results.types.SPECIMEN_COLUMNS`): the ``Specimens`` sheet of a workbook, or the
    ``<out>.specimens.csv`` beside a CSV.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the CSV table asked for is not beside it (a run with
            ``--no-cells`` writes no cell table).
        ResultsFileError: (a ValueError) Not a results file: unknown suffix, empty, columns other than the
            schema's (missing, extra or out of order; named), or a value that cannot be read or is out of
            range (its row and column named); a workbook without the sheet asked for.
        ValueError: Both ``specimens`` and ``cells``.
    """
    path = Path(path)
    if specimens and cells:
        raise ValueError("read the specimens table or the results with their cells, not both at once")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.name.lower()
    if specimens:
        return _read_specimens(path)
    if name.endswith(STORE_SUFFIX):
        return _read_store(path, digest, cells)
    if not name.endswith((".csv", ".xlsx")):
        raise ResultsFileError(f"cannot read {path}: expected a .csv, .xlsx or {STORE_SUFFIX} file")
    if path.stat().st_size == 0:
        raise ResultsFileError(f"{path} is empty: not an allscan results file")
    raw = _with_later_columns(_read_table(path))
    problem = _columns_problem(list(raw.columns))
    if problem:
        raise ResultsFileError(f"{path} is not an allscan results file: {problem}")
    results = _typed(raw, str(path))
    return (results, _read_cells(path)) if cells else results


def _with_later_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """A table in one of the :data:`_EARLIER_COLUMNS` schemas with the columns added since, empty."""
    for earlier in _EARLIER_COLUMNS:
        if list(raw.columns) == list(earlier):
            return raw.assign(**{column: "" for column in COLUMNS[len(earlier):]})
    return raw


def _read_cells(path: Path) -> pd.DataFrame:
    """The cell table of a results CSV (the ``.cells.csv`` beside it) or workbook (its ``Cells`` sheet)."""
    if path.name.lower().endswith(".csv"):
        table = cells_path(path)
        if not table.is_file():
            raise FileNotFoundError(f"no cell table beside {path}: {table} does not exist (a run with --no-cells"
                                    " writes none)")
        raw, source = _read_table(table), str(table)
    else:
        if "Cells" not in _sheet_names(path):
            raise ResultsFileError(f"{path} has no Cells sheet (a run with --no-cells writes none)")
        raw, source = _read_table(path, "Cells"), f"{path}, sheet Cells"
    if list(raw.columns) != list(CELL_COLUMNS):
        raise ResultsFileError(f"{source}: the cell table's columns are not {', '.join(CELL_COLUMNS)}")
    return _typed_cells(raw, source)


_CELL_INTEGERS = {"cell": 1, "x0": 0, "y0": 0, "x1": 0, "y1": 0}
"""The cell table's whole-number columns and their least value."""
_CELL_NUMBERS = ("x", "y", "nucleus_area_px")


def _typed_cells(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The cell table's dtypes, each value checked as :func:`_typed` checks results."""
    typed = pd.DataFrame(index=range(len(frame)))
    for column in CELL_COLUMNS:
        if column in _CELL_INTEGERS:
            convert, dtype = (lambda v, low=_CELL_INTEGERS[column]: None if v is None else _integer(v, low, None),
                              "Int64")
        elif column in _CELL_NUMBERS:
            convert, dtype = (lambda v: None if v is None else _bounded(v, 0.0)), "float64"
        elif column.startswith("p_blast"):
            convert, dtype = (lambda v: None if v is None else _probability(v)), "float64"
        else:
            convert, dtype = (lambda v: _text(v, None)), None
        values = _converted(frame, column, convert, source)
        typed[column] = pd.array(values, dtype=dtype) if dtype else values
    return typed


def _read_specimens(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith(".csv"):
        table = specimens_path(path)
        if not table.is_file():
            raise FileNotFoundError(f"no specimens table beside {path}: {table} does not exist")
        raw = _read_table(table)
    elif name.endswith(".xlsx"):
        raw = _read_table(path, "Specimens")
    else:
        raise ResultsFileError(f"{path}: the specimens table is read from a .csv output (its .specimens.csv) or"
                               " a .xlsx workbook (its Specimens sheet)")
    if list(raw.columns) != list(SPECIMEN_COLUMNS):
        raise ResultsFileError(f"{path}: the specimens table's columns are not {', '.join(SPECIMEN_COLUMNS)}")
    return _typed_specimens(raw, str(path))


_SPECIMEN_INTEGERS = ("images", "scored", "ALL", "normal", "review_images", "out_of_domain", "errors")


def _typed_specimens(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The specimens table's dtypes, each value checked as :func:`_typed` checks results."""
    typed = pd.DataFrame(index=range(len(frame)))
    for column in SPECIMEN_COLUMNS:
        if column in _SPECIMEN_INTEGERS:
            convert, dtype = (lambda v: None if v is None else _integer(v, 0, None)), "Int64"
        elif column in ("top_p_all", "rule_score"):
            convert, dtype = (lambda v: None if v is None else _probability(v)), "float64"
        elif column == "review":
            convert, dtype = _boolean, "boolean"
        else:
            choices = _CHOICES["verdict"] if column == "verdict" else None
            convert, dtype = (lambda v, choices=choices: _text(v, choices)), None
        values = _converted(frame, column, convert, source)
        typed[column] = pd.array(values, dtype=dtype) if dtype else values
    return typed


def _converted(frame: pd.DataFrame, column: str, convert: Callable[[object], object], source: str | None) -> list:
    """Every value of ``column`` converted; the first that cannot be is refused, naming its row and column."""
    values = []
    for row, value in enumerate(frame[column]):
        try:
            values.append(convert(_missing_as_none(value)))
        except (ValueError, TypeError, OverflowError) as err:
            raise ResultsFileError(f"{source}, row {row + 1 + _HEADER_ROWS}, column {column}: {err}") from None
    return values


def _sheet_names(path: Path) -> list[str]:
    try:
        with pd.ExcelFile(path) as book:
            return [str(name) for name in book.sheet_names]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:
        raise ResultsFileError(f"cannot read {path} as a results file: {err}") from None


def _read_table(path: Path, sheet: str = "Results") -> pd.DataFrame:
    """Every cell of a results CSV or a workbook's sheet as read, untyped."""
    try:
        if path.name.lower().endswith(".csv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return pd.read_excel(path, sheet_name=sheet, dtype=object)
    except pd.errors.EmptyDataError:
        raise ResultsFileError(f"{path} holds no header: not an allscan results file") from None
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:  # parser and decoding errors are ValueErrors
        raise ResultsFileError(f"cannot read {path} as a results file: {err}") from None


def _columns_problem(columns: list) -> str:
    """How ``columns`` differ from the schema's, or an empty string."""
    if columns == list(COLUMNS):
        return ""
    missing = [c for c in COLUMNS if c not in columns]
    extra = [str(c) for c in columns if c not in COLUMNS]
    if missing or extra:
        return "; ".join(filter(None, [f"missing columns {', '.join(missing)}" if missing else "",
                                       f"unknown columns {', '.join(extra)}" if extra else ""]))
    if len(columns) != len(set(columns)):
        return f"repeated columns {', '.join(sorted({c for c in columns if columns.count(c) > 1}))}"
    first = next(i for i, (got, wanted) in enumerate(zip(columns, COLUMNS)) if got != wanted)
    return (f"column {first + 1} is {columns[first]}, expected {COLUMNS[first]} "
            "(the columns must be in the schema's order)")


def _read_store(path: Path, digest: str | None, cells: bool) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    from allscan.results.schema import StoreError
    from allscan.results.store import ResultStore, latest_digest

    try:
        digest = digest or latest_digest(path)
        results: list[ImageResult] = []
        if digest is not None:
            with ResultStore(path, digest, writer=False) as store:
                results = list(store.results())
    except (StoreError, sqlite3.DatabaseError) as err:
        raise ResultsFileError(f"{path} is not a readable allscan results store: {err}") from None
    return (results_frame(results), cells_frame(results)) if cells else results_frame(results)


def _typed(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The schema's dtypes; each value of a file (``source``) is checked, and the first bad one refused."""
    typed = pd.DataFrame(index=range(len(frame)))
    for column in COLUMNS:
        values = _converted(frame, column, _converter(column), source)
        if column in _INTEGER:
            typed[column] = pd.array(values, dtype="Int64")
        elif column in _FLOAT or column in _PERCENT or column in _POSITIVE:
            typed[column] = pd.array(values, dtype="float64")
        elif column == "review":
            typed[column] = pd.array(values, dtype="boolean")
        else:
            typed[column] = values
    return typed


def _converter(column: str) -> Callable[[object], object]:
    """The function that turns one cell of ``column`` into its typed value, raising ValueError if it cannot."""
    if column in _INTEGER:
        low, high = {"agreement": (0, len(MODEL_NAMES)), "cells": (0, None), "blasts": (0, None)}.get(column, (1, None))
        return lambda value: None if value is None else _integer(value, low, high)
    if column in _FLOAT:
        return lambda value: None if value is None else _probability(value)
    if column in _PERCENT:
        return lambda value: None if value is None else _bounded(value, 0.0, 100.0)
    if column in _POSITIVE:
        return lambda value: None if value is None else _bounded(value, 0.0)
    if column == "review":
        return _boolean
    choices = _CHOICES.get(column)
    return lambda value: _text(value, choices)


def _missing_as_none(value: object) -> object:
    if value is None or (isinstance(value, str) and value == "") or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _integer(value: object, low: int, high: int | None) -> int:
    number = float(value) if isinstance(value, float) else None
    if isinstance(value, bool) or (number is not None and not number.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        whole = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if whole < low or (high is not None and whole > high):
        raise ValueError(f"{whole} is out of range ({low} to {high})" if high is not None else
                         f"{whole} is out of range (at least {low})")
    return whole


def _number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _bounded(value: object, low: float, high: float = math.inf) -> float:
    number = _number(value)
    if not low <= number <= high:
        raise ValueError(f"{value!r} is out of range ({low:g} to {high:g})" if high < math.inf else
                         f"{value!r} is out of range (at least {low:g})")
    return number


def _probability(value: object) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError(f"{value!r} is not a probability (0 to 1)")
    return number


def _boolean(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("true", "false"):
        raise ValueError(f"{value!r} is not true or false")
    return text == "true"


def _text(value: object, choices: tuple[str, ...] | None) -> str:
    text = restore(str(value)) if value is not None else ""
    if choices is not None and text not in choices:
        raise ValueError(f"{text!r} is not one of {', '.join(repr(c) for c in choices)}")
    return text
