"""Atomic file and folder writes: a crash leaves the old file or folder or the new one, never half of one."""

import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

NEW_FOLDER = ".allscan-tmp-"
"""Marks the copy of a folder that :func:`replace_folder` builds beside it (``models.allscan-tmp-x1y2``)."""
OLD_FOLDER = ".allscan-tmp-old-"
"""Marks the old folder :func:`replace_folder` renamed aside, between its two renames."""


class OutputError(OSError):
    """A file allscan writes could not be written (disk full, permission lost, read-only location).

    Attributes:
        path: The file that could not be written.
        cause: Why, in words (e.g. ``No space left on device``).
    """

    def __init__(self, path: Path, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path = Path(path)
        self.cause = cause


def describe(err: OSError) -> str:
    """An OSError's cause in words, without Python's ``[Errno n]`` prefix."""
    return err.strerror or str(err) or type(err).__name__


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    Raises:
        OutputError: The file could not be written; the old file, if any, is left as it was.
    """
    path = Path(path)
    try:
        _write_and_replace(path, write)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(path, describe(err)) from err


def _write_and_replace(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".allscan-tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def replace_folder(path: Path, build: Callable[[Path], T]) -> T:
    """Update the folder ``path`` all at once: ``build`` works on a complete copy of it (empty where ``path``
    does not exist yet) in a temporary folder beside it, which then takes its place.

    On any failure or interrupt before the swap, the copy is removed and ``path`` is left exactly as it
    was. The swap renames ``path`` aside (``<name>.allscan-tmp-old-<random>``), renames the copy in, then
    removes the old folder; an interrupt between the two renames renames the old one back. Only a process
    killed there (SIGKILL, power loss) leaves no ``path``, with the whole old folder aside: the next call
    renames it back before it starts, and removes what earlier cut calls left (a folder under the old
    name is always whole: it is renamed again before it is removed). Two calls on one folder at the same
    time are not supported.

    Args:
        build: Called with the temporary folder; its return value is returned.

    Raises:
        OutputError: The copy or the swap could not be written; ``path`` is left as it was.
    """
    path = Path(path).resolve()
    _recover(path)
    new = _make_folder(path)
    try:
        _copy_into(path, new)
        result = build(new)
        _swap(path, new)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return result


def _recover(path: Path) -> None:
    """Rename back the old folder that a call killed between its two renames left aside; remove other leftovers."""
    name = glob.escape(path.name)
    old = sorted(path.parent.glob(f"{name}{OLD_FOLDER}*"), key=lambda p: p.stat().st_ctime)
    if old and not path.exists():
        _rename(old.pop(), path)
    for leftover in [*old, *path.parent.glob(f"{name}{NEW_FOLDER}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _make_folder(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f"{path.name}{NEW_FOLDER}", dir=path.parent))
        os.chmod(new, 0o777 & ~_umask())  # mkdtemp makes 0700; a new folder gets the usual permissions
    except OSError as err:
        raise OutputError(path, describe(err)) from err
    return new


def _copy_into(path: Path, new: Path) -> None:
    if not path.exists():
        return
    try:
        shutil.copytree(path, new, symlinks=True, dirs_exist_ok=True)
    except shutil.Error as err:  # one error per file: name the first
        source, _, why = err.args[0][0]
        raise OutputError(Path(source), why) from err
    except OSError as err:
        raise OutputError(path, describe(err)) from err


def _swap(path: Path, new: Path) -> None:
    """Put ``new`` in the place of ``path``; the old folder then goes under ``new``'s name."""
    if not path.exists():
        _rename(new, path)
        return
    old = path.with_name(path.name + OLD_FOLDER + new.name.rpartition("-")[2])
    _rename(path, old)
    try:
        _rename(new, path)
    except BaseException:
        _rename(old, path)
        raise
    try:
        os.rename(old, new)  # the caller removes it under the copy's name: one under the old name is always whole
    except OSError:
        shutil.rmtree(old, ignore_errors=True)


def _rename(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as err:
        raise OutputError(target, describe(err)) from err
