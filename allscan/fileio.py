"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
