"""Checks that run before the models load, so a run that cannot finish stops in well under a second.

Every output must be a file (not a folder) in a folder that can be written, and an existing
output must be writable, since allscan replaces it; folders allscan writes into must be
folders it can write. The results store is then claimed (its writer lock taken) and opened:
migrated in place, or, if corrupt, moved aside for a fresh one. Only light modules are
imported here: no TensorFlow.
"""

import os
import re
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from allscan.fileio import describe
from allscan.images import IMAGE_SUFFIXES, has_images, other_suffixes
from allscan.paths import cells_path, check_output_suffix, sidecar_path, specimens_path, store_path_for
from allscan.results.lock import StoreBusy, StoreLock, lock_path_for
from allscan.results.schema import StoreError, prepare_store


class PreflightError(Exception):
    """A run that cannot succeed, found before any work was done; the message says why."""


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
    out = Path(out)
    if not out.is_file() or out.stat().st_size == 0:
        return
    if out.suffix.lower() == ".csv":
        try:
            with open(out, "rb") as handle:
                first = handle.read(len(RESULTS_HEADER) + 3).decode("utf-8", "replace").lstrip("\ufeff")
        except OSError as err:
            raise PreflightError(f"cannot read the output {out}: {describe(err)}") from None
        ours, what = first.startswith(RESULTS_HEADER), "its first line is not allscan's header"
    else:
        try:
            with zipfile.ZipFile(out) as book:
                ours = bool(RESULTS_SHEET.search(book.read("xl/workbook.xml")))
        except (OSError, KeyError, zipfile.BadZipFile):
            ours = False
        what = "it has no Results sheet"
    if not ours:
        raise PreflightError(f"the output {out} exists and is not an allscan results file ({what}); a run"
                             " replaces its output: give another --out, or move that file away first")


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
