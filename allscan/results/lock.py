"""One writer per results store: an exclusive lock held for a whole run, released when the process ends.

The lock is ``flock`` on ``<store>.lock`` beside the store. The operating system drops it
however the holder ends (even ``kill -9``), so a stale lock never blocks a rerun. The file
names the holder (pid, host, start time) so a second run can say who has the store. Within
one process the lock is shared: the command line takes it before the models load and the
store opened later in the same run takes it again; but only one writer may have a store open
at a time, so two threads of one program writing the same store are refused as two processes are.
"""

import fcntl
import json
import os
import platform
import threading
from datetime import datetime
from pathlib import Path


class StoreBusy(Exception):
    """Another allscan process is writing the same results store."""


_held: dict[str, list] = {}  # lock file → [open file descriptor, holders in this process]
_writing: set[str] = set()  # lock files whose store a writer has open in this process
_guard = threading.Lock()


def lock_path_for(store: Path) -> Path:
    return Path(str(store) + ".lock")


class StoreLock:
    """Exclusive use of one results store by this process; use as a context manager."""

    def __init__(self, store: Path, writer: bool = False):
        self.store = Path(store)
        self.path = lock_path_for(self.store)
        self._key = os.path.abspath(self.path)
        self._writer = writer
        self._acquired = False

    def acquire(self) -> None:
        """Take the lock without waiting (as the store's one open ``writer``, if so made).

        Raises:
            StoreBusy: Another process holds it, or another writer in this process has the store open; the
                message names which.
            OSError: The lock file cannot be created or locked.
        """
        with _guard:
            if self._writer and self._key in _writing:
                raise StoreBusy(f"the results store {self.store} is being written by another run in this program;"
                                " wait for it to finish, or use another out")
            if self._key in _held:
                _held[self._key][1] += 1
                self._take()
                return
            fd = self._lock_file()
            _record_holder(fd)
            _held[self._key] = [fd, 1]
            self._take()

    def _lock_file(self) -> int:
        """The lock file, open and locked. A lock file can be removed by its holder (a refused run removes the
        folders it made): one locked after it was removed is not the file at the path, and is opened anew."""
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise StoreBusy(f"the results store {self.store} is in use by another allscan ({holder}); "
                                "wait for it to finish or stop it, or use another --out") from None
            except OSError:
                os.close(fd)
                raise
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _take(self) -> None:
        self._acquired = True
        if self._writer:
            _writing.add(self._key)

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        with _guard:
            if self._writer:
                _writing.discard(self._key)
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                os.close(entry[0])  # closing the descriptor drops the lock

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": platform.node(),
            "since": datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
