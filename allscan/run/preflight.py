"""Checks that run before the models load, so a run that cannot finish stops in well under a second.

Every output must be a file (not a folder) in a folder that can be written, and an existing
output must be writable and one allscan wrote (or empty), since allscan replaces it; folders
allscan writes into must be folders it can write. The results store is then claimed (its writer
lock taken) and opened: migrated in place, or, if corrupt, moved aside for a fresh one. Only light
modules are imported here: no TensorFlow.
"""

import json
import os
import re
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from allscan.fileio import describe
from allscan.images import IMAGE_SUFFIXES, has_images, is_own_figure, other_suffixes
from allscan.paths import cells_path, check_output_suffix, sidecar_path, specimens_path, store_path_for
from allscan.results.lock import StoreBusy, StoreLock, lock_path_for
from allscan.results.schema import StoreError, prepare_store


class PreflightError(ValueError):
    """A run that cannot succeed, found before any work was done; the message says why."""


@contextmanager
def leaving_no_trace(paths: Iterable[Path | None]) -> Iterator[None]:
    """Remove the folders that checking and claiming the outputs at ``paths`` made (each missing folder on the
    way to a path, and a missing output folder itself) when the command ends by an error or a stop with nothing
    in them but empty folders and the lock of a results store never written: a refused run leaves no trace."""
    made = {top for path in paths if path is not None if (top := _first_missing(Path(path))) is not None}
    try:
        yield
    except BaseException:
        for folder in made:
            if folder.is_dir() and all(_trace(p) for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its folders that does not exist, or None when ``path`` does."""
    made = None
    for folder in (path.absolute(), *path.absolute().parents):
        if folder.exists() or folder.is_symlink():
            break
        made = folder
    return made


def _trace(path: Path) -> bool:
    """Whether ``path`` is only what a refused run leaves: a folder, or the lock of a store that does not exist."""
    if path.is_dir() and not path.is_symlink():
        return True
    store = path.with_name(path.name.removesuffix(".lock"))
    return path.is_file() and lock_path_for(store) == path and store.name.endswith(".allscan.sqlite") \
        and not store.exists()


def check_inputs(paths: Iterable[Path]) -> None:
    """Every input path exists."""
    for path in paths:
        if not Path(path).exists():
            raise PreflightError(f"no such file or folder: {path}")


def check_images_found(paths: list[Path], recursive: bool = True) -> None:
    """At least one image is among the inputs: a run over none is most likely the wrong folder, and would
    replace the results file with an empty one."""
    if has_images(paths, recursive):
        return
    others = other_suffixes(paths, recursive)
    found = ", ".join(f"{count} {suffix or 'without a suffix'}" for suffix, count in others.most_common())
    names = ", ".join(str(p) for p in paths)
    raise PreflightError(
        f"no images to score in {names}: allscan reads {' '.join(sorted(IMAGE_SUFFIXES))} files"
        + (f"; found only other files ({found})" if found else "; found no files")
        + ("; subfolders were not searched (--no-recursive)" if not recursive else ""))


def check_watched_folder(folder: Path) -> None:
    """``folder`` is a folder that can be read, made if it is missing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PreflightError(f"{folder} is a file; watch needs a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PreflightError(f"cannot make the watched folder {folder}: {describe(err)}") from None
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PreflightError(f"cannot read the watched folder {folder}: permission denied")


def check_outputs(out: Path, report: Path | None = None, folders: Iterable[tuple[str, Path | None]] = (),
                  pdf: Path | None = None) -> None:
    """The results file, its sidecar, specimens and cell tables and store, the reports and ``(what, folder)``
    pairs are each a path of their own and can all be written."""
    try:
        check_output_suffix(out)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    files = [("output", out)]
    if Path(out).suffix.lower() == ".csv":
        files += [("run metadata file", sidecar_path(out)), ("specimens table", specimens_path(out)),
                  ("cell table", cells_path(out))]
    files += [("results store", store_path_for(out)), ("results store's lock", lock_path_for(store_path_for(out))),
              ("report", report), ("PDF report", pdf)]
    files = [(what, path) for what, path in files if path is not None]
    folders = [(what, folder) for what, folder in folders if folder is not None]
    check_distinct([*files, *folders])
    check_writable_file(out, "output")
    check_results_file(out)
    for what, path in files[1:]:
        check_writable_file(path, what)
    if report is not None:
        check_own_file(report, "report", "--report", OWN_REPORT)
    if pdf is not None:
        check_own_file(pdf, "PDF report", "--pdf", OWN_PDF)
    for what, folder in folders:
        check_writable_folder(folder, what)


def check_distinct(outputs: list[tuple[str, Path]]) -> None:
    """No two of the ``(what, path)`` outputs are one path (as typed, or through a link): one would
    overwrite the other, e.g. ``--report`` given the name of ``--out``."""
    seen: dict[Path, str] = {}
    for what, path in outputs:
        key = Path(path).resolve()
        if key in seen:
            raise PreflightError(f"the {seen[key]} and the {what} are both {path}: give each its own name")
        seen[key] = what


RESULTS_HEADER = "path,file,sha256,"
"""How every results CSV allscan has written begins (its first columns never changed)."""
RESULTS_SHEET = re.compile(rb'<sheet\b[^>]*\bname="Results"')
"""The ``Results`` sheet in a workbook's ``xl/workbook.xml``, as every allscan workbook has it."""


def check_results_file(out: Path) -> None:
    """An existing ``out`` is one allscan wrote (or empty), since a run replaces it: not, say, a lab's own
    ``results.xlsx`` (the default name) or patient list given as ``--out`` by mistake."""
    check_own_file(out, "output", "--out", OWN_CSV if Path(out).suffix.lower() == ".csv" else OWN_WORKBOOK)


def _own_csv(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(RESULTS_HEADER) + 3).decode("utf-8", "replace").lstrip("\ufeff").startswith(
            RESULTS_HEADER)


def _own_workbook(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as book:
            return bool(RESULTS_SHEET.search(book.read("xl/workbook.xml")))
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


REPORT_TITLE = b"<title>allscan report</title>"
"""In the head of every HTML report allscan has written, within its first few hundred bytes."""
_REPORT_HEAD_BYTES = 1024
PDF_INFO_MARKS = (b"/Author (allscan)", b"/Title (allscan batch report)")
"""In the Info dictionary of every PDF report allscan has written."""
_PDF_TAIL_BYTES = 1024
"""ReportLab ends a PDF with its trailer (``/Info n 0 R``) and ``startxref``: the last KB holds both."""
_PDF_OBJECT_BYTES = 1024
"""Enough for the Info dictionary (its title, author, subject and dates)."""
_PDF_INFO = re.compile(rb"/Info (\d+) 0 R")
_PDF_STARTXREF = re.compile(rb"startxref\s+(\d+)\s+%%EOF\s*$")
_PDF_XREF_HEAD = re.compile(rb"xref\r?\n0 \d+\r?\n")
_PDF_XREF_ENTRY_BYTES = 20
"""Each entry of a cross-reference table: a 10-digit offset, generation, type and a two-byte line end."""


def _own_report(path: Path) -> bool:
    with open(path, "rb") as handle:
        return REPORT_TITLE in handle.read(_REPORT_HEAD_BYTES)


def _own_pdf(path: Path) -> bool:
    """Whether ``path`` is a PDF whose Info dictionary says allscan wrote it. A PDF saved again by another
    program (signed, annotated: its update appended) is not allscan's any more."""
    with open(path, "rb") as handle:
        info = _pdf_info(handle) if handle.read(5) == b"%PDF-" else b""
    return all(mark in info for mark in PDF_INFO_MARKS)


def _pdf_info(handle) -> bytes:
    """The Info object of the PDF open as ``handle``, found through its trailer and its cross-reference
    table as ReportLab writes them (a few KB read however long the PDF), or empty if not found that way."""
    handle.seek(max(0, handle.seek(0, os.SEEK_END) - _PDF_TAIL_BYTES))
    tail = handle.read()
    info, start = _PDF_INFO.search(tail), _PDF_STARTXREF.search(tail)
    if info is None or start is None:
        return b""
    number, xref = int(info[1]), int(start[1])
    handle.seek(xref)
    head = _PDF_XREF_HEAD.match(handle.read(64))
    if head is None:
        return b""
    handle.seek(xref + head.end() + _PDF_XREF_ENTRY_BYTES * number)
    offset = handle.read(10)
    if not offset.isdigit():
        return b""
    handle.seek(int(offset))
    body = handle.read(_PDF_OBJECT_BYTES)
    return body[:body.find(b"endobj")] if body.startswith(b"%d 0 obj" % number) else b""


FIGURES_KEYS = {"models", "ensemble", "models_digest"}
"""At the top level of every figures file ``allscan evaluate --out`` writes."""
_FIGURES_MAX_BYTES = 1 << 20
"""A figures file is a few KB (tens with the shortcut check): a larger file is not one, and is not parsed."""


def _own_figures(path: Path) -> bool:
    if path.stat().st_size > _FIGURES_MAX_BYTES:
        return False
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(data, dict) and FIGURES_KEYS <= data.keys()


@dataclass(frozen=True)
class OwnOutput:
    """How to recognise one kind of output allscan wrote.

    Attributes:
        ours: Whether a file is one (reading only its first or last few KB).
        kind: What such a file is, and ``lacks`` what a file that is not one lacks, for the message.
    """

    ours: Callable[[Path], bool]
    kind: str
    lacks: str


OWN_CSV = OwnOutput(_own_csv, "an allscan results file", "its first line is not allscan's header")
OWN_WORKBOOK = OwnOutput(_own_workbook, "an allscan results file", "it has no Results sheet")
OWN_REPORT = OwnOutput(_own_report, "an allscan HTML report", "it is not an HTML page titled allscan report")
OWN_PDF = OwnOutput(_own_pdf, "an allscan PDF report", "it is not a PDF with allscan as its author")
OWN_FIGURE = OwnOutput(is_own_figure, "an allscan figure", "it is not a PNG with allscan's Software text")
OWN_FIGURES = OwnOutput(_own_figures, "allscan's figures", "it is not the JSON object allscan evaluate writes")


def check_own_file(path: Path, what: str, option: str, own: OwnOutput) -> None:
    """An existing ``path`` (the ``what``, given as ``option``) is one allscan wrote (or empty), since it is
    replaced: not, say, an input image or a lab's document given by mistake."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        ours = own.ours(path)
    except OSError as err:
        raise PreflightError(f"cannot read the {what} {path}: {describe(err)}") from None
    if not ours:
        raise PreflightError(f"the {what} {path} exists and is not {own.kind} ({own.lacks}); allscan replaces"
                             f" its {what}: give another {option}, or move that file away first")


def check_writable_file(path: Path, what: str) -> None:
    """``path`` can be created, or replaced when it exists."""
    path = Path(path)
    if path.is_dir():
        raise PreflightError(f"{what} {path} is a folder; give a file name")
    check_writable_folder(path.parent, f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise PreflightError(f"cannot replace the {what} {path}: it is read-only or immutable")


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists or can be made, and a file can be created in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PreflightError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".allscan-probe-", suffix=".allscan-tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PreflightError(f"cannot write in the {what} {folder}: {describe(err)}") from None


def claim_store(out: Path) -> tuple[StoreLock, Path | None]:
    """Take the writer lock of ``out``'s results store and, if it exists, open it once (migrate, or replace if corrupt).

    Returns:
        The held lock (release it when the run ends) and where a corrupt store was moved, if it was.
    """
    store = store_path_for(out)
    lock = StoreLock(store)
    try:
        lock.acquire()
    except StoreBusy as exc:
        raise PreflightError(str(exc)) from None
    except OSError as err:
        raise PreflightError(f"cannot lock the results store {store}: {describe(err)}") from None
    try:
        return lock, prepare_store(store) if store.exists() else None
    except StoreError as exc:
        lock.release()
        raise PreflightError(str(exc)) from None
    except (sqlite3.Error, OSError) as err:
        lock.release()
        raise PreflightError(f"cannot open the results store {store}: {err}") from None
