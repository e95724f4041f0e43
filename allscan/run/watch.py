"""``allscan watch``: score images as they land in a folder, exactly once, through restarts.

A file is scored only once its size and mtime have not changed for ``settle``
seconds; a decode that fails on a file that may still be growing is retried
before it becomes an error row. Results go through the same store as predict,
so a restart's catch-up pass scores only what has no row yet.
"""

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer as InotifyObserver
from watchdog.observers.polling import PollingObserver

from allscan.fileio import OutputError, describe
from allscan.images import find_images, is_image_file
from allscan.paths import check_output_suffix, sidecar_path, store_path_for
from allscan.results.report import ReportPictures
from allscan.results.store import ResultStore
from allscan.results.tables import csv_line
from allscan.results.types import ImageResult
from allscan.run.committer import Committer, Observer
from allscan.run.job import Prepared, prepare
from allscan.run.outputs import write_outputs
from allscan.run.specimens import Specimens
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.scoring.pipeline import Pipeline, as_pipeline

if TYPE_CHECKING:
    from allscan.models.ensemble import Ensemble

DEFAULT_SETTLE = 1.0
DEFAULT_MAX_DELAY = 1.0
DEFAULT_XLSX_EVERY = 30.0
DECODE_RETRIES = 3


@dataclass(frozen=True)
class WatchConfig:
    """How ``allscan watch`` behaves.

    Attributes:
        folder: The incoming folder.
        out: Results file (.csv appended row by row, or .xlsx rewritten periodically).
        recursive: Watch sub-folders too.
        poll: Poll the folder instead of relying on filesystem events (network shares).
        settle: Seconds a file's size and mtime must stay unchanged before it is scored.
        max_delay: Longest a ready image waits for others to fill a batch.
        batch_size: Largest batch.
        xlsx_every: Seconds between rewrites of an .xlsx output.
        move_to: Where scored images go (into ``<verdict>/`` or ``review/``), or None.
        poll_interval: Seconds between checks of pending files.
        heatmaps: Grad-CAM figures to write, or None.
        report: HTML report rewritten with the outputs, or None.
        cells_geojson: Folder for each image's cells as GeoJSON, or None.
    """

    folder: Path
    out: Path
    recursive: bool = True
    poll: bool = False
    settle: float = DEFAULT_SETTLE
    max_delay: float = DEFAULT_MAX_DELAY
    batch_size: int = 16
    xlsx_every: float = DEFAULT_XLSX_EVERY
    move_to: Path | None = None
    poll_interval: float = 0.1
    heatmaps: HeatmapOptions | None = None
    report: Path | None = None
    cells_geojson: Path | None = None


@dataclass
class _Pending:
    """A file waiting to be scored: its size and mtime when last seen and since when they hold, its failed
    decodes, when it may be tried next, and its size and mtime when a decode last failed."""

    size: int
    mtime: float
    stable_since: float
    attempts: int = 0
    not_before: float = 0.0
    failed: tuple[int, float] | None = None


@dataclass
class WatchStats:
    """Live figures for the display; ``scored`` counts files (one stored again after a stalled write counts
    once, as its row in the output)."""

    queued: int = 0
    scored: int = 0
    started: float = field(default_factory=time.monotonic)
    recent: list[ImageResult] = field(default_factory=list)
    stored_paths: set[Path] = field(default_factory=set)
    notice: str = ""
    """What the user should know now (the watched folder is gone), or empty."""
    output_notice: str = ""
    """Why the outputs could not be rewritten at the last try (a workbook open in Excel on a share), or empty."""

    def stored(self, result: ImageResult) -> None:
        if result.path not in self.stored_paths:
            self.stored_paths.add(result.path)
            self.scored += 1
        self.recent = [result, *self.recent[:9]]


class _Handler(FileSystemEventHandler):
    # Opening a file to read it raises events too: only writes, creations and moves matter.
    _EVENTS = frozenset({"created", "modified", "moved", "closed"})

    def __init__(self, notify: Callable[[Path], None]):
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in self._EVENTS:
            return
        for attr in ("dest_path", "src_path"):
            path = getattr(event, attr, "")
            if path:
                self.notify(Path(os.fsdecode(path)))


FOLDER_CHECK = 1.0
"""Seconds between checks that the watched folder is still there (a share unmounted or a drive pulled stops its
events without a word) and that a CSV output is still the file being appended to."""


class Watcher:
    """Watches a folder and scores each complete new image once.

    ``on_ready`` is called once the folder is watched and its catch-up pass is queued, with
    the number of images queued for it.
    """

    def __init__(self, config: WatchConfig, scoring: "Ensemble | Pipeline", observer: Observer | None = None,
                 on_ready: Callable[[int], None] | None = None):
        check_output_suffix(config.out)
        self.config = config
        self.pipeline = as_pipeline(scoring)
        self.observer = observer
        self.on_ready = on_ready
        self.stats = WatchStats()
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._excluded = {p.resolve() for p in (config.out, store_path_for(config.out), sidecar_path(config.out))}
        # Scored images are moved to --move-to, so it is never watched; the heatmaps folder may be the watched folder
        # or lie in it (images landing there are scored): allscan's figures are told apart by their marker.
        self._excluded_dirs = [config.move_to] if config.move_to else []
        self._csv = None
        self._in_csv: set[Path] = set()
        self._replaced = False
        self._observer = None
        self._folder_gone = False
        self._store: ResultStore | None = None
        self._pictures = ReportPictures(self._locate, keep=True)
        self._last_rewrite = 0.0
        self._dirty = False
        self._started = datetime.now().astimezone()
        self._specimens = Specimens([config.folder])

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, write outputs and return."""
        self._stop.set()

    def notify(self, path: Path) -> None:
        """Note that ``path`` appeared or changed (called from the filesystem observer thread)."""
        if any(_inside(path, d) for d in self._excluded_dirs):
            return
        if not is_image_file(path) or path.resolve() in self._excluded or _in_hidden_folder(path, self.config.folder):
            return
        if not self.config.recursive and path.parent.resolve() != self.config.folder.resolve():
            return
        with self._lock:
            if path not in self._pending:
                self._pending[path] = _Pending(-1, -1.0, time.monotonic())

    def serve(self, tick: Callable[[], None] = lambda: None, interval: float = 0.25) -> None:
        """Run on a worker thread until Ctrl-C, SIGTERM or :meth:`stop`, calling ``tick`` (a live
        view's refresh) every ``interval`` seconds; a failure of the loop is raised here. Call it from
        the main thread (signal handlers live there)."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.run()
            except BaseException as exc:  # raised on the calling thread below
                failure.append(exc)

        # Ctrl-C asks the loop to stop, as SIGTERM does, rather than raising in the main thread: a
        # KeyboardInterrupt inside Thread.join leaves the thread marked as ended, and the interpreter then
        # exited while the loop was still writing the outputs.
        previous = {sig: signal.signal(sig, lambda *_: self.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
        runner = threading.Thread(target=run, name="allscan-watch")
        runner.start()
        try:
            while runner.is_alive():
                runner.join(interval)
                tick()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure:
            raise failure[0]

    def run(self) -> None:
        """Catch up on the folder, then score arrivals until :meth:`stop`."""
        folder = self.config.folder
        folder.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=0.5) if self.config.poll else InotifyObserver()
        observer.schedule(_Handler(self.notify), _watch_path(folder), recursive=self.config.recursive)
        observer.start()
        self._observer = observer
        try:
            with ResultStore(store_path_for(self.config.out), self.pipeline.digest) as store:
                self._store = store
                self._write_all(store)  # repairs a CSV line cut by a crash; a CSV is then appended to
                missing = self._catch_up(store)
                if self.on_ready is not None:
                    self.on_ready(missing)
                committer = Committer(self.pipeline, store, self.config.batch_size, _Relay(self),
                                      self.config.heatmaps, self._specimens, self.config.cells_geojson)
                self._loop(committer, store)
                self._write_all(store)
        finally:
            observer.stop()
            observer.join(timeout=5)
            if self._csv is not None:
                self._csv.close()

    def _catch_up(self, store: ResultStore) -> int:
        """Queue the folder's images that have no row yet, under any spelling of their path (the folder given
        relative, then absolute), or that changed since their row was recorded; how many."""
        found = find_images([self.config.folder], self.config.recursive, self._excluded, self._excluded_dirs)
        recorded = {_resolved(path): when for path, when in store.recorded().items()}
        missing = [path for path in found if _changed_since(path, recorded.get(_resolved(path)))]
        for path in missing:
            self.notify(path)
        return len(missing)

    def _check_folder(self, store: ResultStore) -> None:
        """Say so when the watched folder goes; when it is back, watch it again and catch up on what it holds."""
        folder = self.config.folder
        present = _is_dir(folder)
        if present != self._folder_gone:
            return
        self._folder_gone = not present
        if not present:
            self.stats.notice = f"the watched folder {folder} is gone (unmounted or deleted): waiting for it to return"
            return
        self._observer.unschedule_all()
        try:
            self._observer.schedule(_Handler(self.notify), _watch_path(folder), recursive=self.config.recursive)
            self._catch_up(store)
        except OSError:  # gone again, or a share not answering yet: tried again at the next check
            self._folder_gone = True
            return
        self.stats.notice = ""

    def _check_output(self, store: ResultStore) -> None:
        """A CSV output moved away or deleted while watching (archived at the end of a day, say) is written
        again from the store, with every row so far: appends had gone to the file that was moved."""
        if self._csv is None:
            return
        try:
            current = os.stat(self.config.out)
        except FileNotFoundError:
            current = None
        except OSError:  # cannot tell (a share that stalls): appends go on, and the stop rewrites it anyway
            return
        opened = os.fstat(self._csv.fileno())
        if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            self._rewrite(store)

    def _loop(self, committer: Committer, store: ResultStore) -> None:
        oldest_ready: float | None = None
        checked = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - checked >= FOLDER_CHECK:
                self._check_folder(store)
                self._check_output(store)
                checked = now
            for item in self._ready(now, store):
                committer.add(item)
                if committer.pending and oldest_ready is None:
                    oldest_ready = now
            if not committer.pending:
                oldest_ready = None
            elif not self._pending or now - (oldest_ready or now) >= self.config.max_delay:
                committer.flush()
                oldest_ready = None
            self.stats.queued = len(self._pending) + len(committer.pending)
            if self._replaced:
                self._replaced = False
                self._rewrite(store)
            self._maybe_rewrite(store)
            self._stop.wait(self.config.poll_interval)
        committer.flush()

    def _ready(self, now: float, store: ResultStore) -> list[Prepared]:
        """Files whose size and mtime have settled, prepared; vanished or already scored files are dropped."""
        with self._lock:
            candidates = list(self._pending.items())
        ready = []
        for path, state in candidates:
            if now < state.not_before:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                self._forget(path)
                continue
            except OSError:  # a share that stalls (EIO, ESTALE): wait until it answers, as for a file being written
                state.size, state.stable_since = -1, now
                continue
            if (st.st_size, st.st_mtime) != (state.size, state.mtime):
                state.size, state.mtime, state.stable_since = st.st_size, st.st_mtime, now
                continue
            if now - state.stable_since < self.config.settle:
                continue
            item = prepare(path, self.pipeline.maker, frozenset(), self.config.heatmaps is not None)
            if item.error and _present(path):
                if state.failed != (st.st_size, st.st_mtime):
                    state.attempts = 0  # it changed since it last failed to decode: still being written
                if state.attempts < DECODE_RETRIES:
                    state.attempts += 1
                    state.failed = (st.st_size, st.st_mtime)
                    state.not_before = now + self.config.settle
                    state.size = -1
                    continue
            if item.error and not _present(path):
                self._forget(path)
                continue
            self._forget(path)
            if not item.error and store.has_path(path, item.sha256):
                continue
            if not item.error and store.score_for(item.sha256) is not None:
                item = replace(item, fields=None, known=True)
            ready.append(item)
        return ready

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def stored(self, result: ImageResult) -> None:
        """Called once a result is durable: append it (a file stored again under its name has the CSV written
        again instead, without its old row), move the image, report it."""
        self.stats.stored(result)
        self._dirty = True
        if self._csv is not None and result.path in self._in_csv:
            self._replaced = True  # a file replaced under its name (a corrected field): its old row must go
        elif self._csv is not None:
            try:
                self._csv.write(csv_line(result))
                self._csv.flush()
                os.fsync(self._csv.fileno())
            except OSError as err:
                raise OutputError(self.config.out, describe(err)) from err
            self._in_csv.add(result.path)
        if self.config.move_to is not None:
            self._move(result)

    def _bucket(self, result: ImageResult) -> Path:
        """The ``--move-to`` folder a stored image goes to: ``review`` when flagged, else its verdict's."""
        return self.config.move_to / ("review" if result.score is not None and result.score.review else result.verdict)

    def _move(self, result: ImageResult) -> None:
        """Move a stored image to its ``--move-to`` folder, under a name no file or row there has, and record its
        row there: a later image of the same name in the watched folder then gets a row of its own."""
        target_dir = self._bucket(result)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / result.path.name
        n = 1
        while target.exists() or self._store.has_path(target):
            target = target_dir / f"{result.path.stem}-{n}{result.path.suffix}"
            n += 1
        try:
            shutil.move(str(result.path), target)
        except FileNotFoundError:
            return
        except OSError as err:
            raise OutputError(target, describe(err)) from err
        self._store.move_path(result.path, target)

    def _locate(self, result: ImageResult) -> Path:
        """Where a result's image is now: its path, or, moved by a watch before rows followed their images,
        under its name in its ``--move-to`` folder (the report checks its content against the result's)."""
        path = result.path
        if self.config.move_to is None or path.exists():
            return path
        return self._bucket(result) / path.name

    def _write_all(self, store: ResultStore) -> None:
        """Rewrite the whole output atomically from the store (every row stored for these models)."""
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        paths = [r.path for r in store.results()]
        self._in_csv = set(paths)
        write_outputs(self.config.out, store, paths, self.pipeline, self._started, report=self.config.report,
                      specimens=self._specimens, pictures=self._pictures, keep_specimens=True)
        if self._csv is None and self.config.out.suffix.lower() == ".csv" and not self._stop.is_set():
            try:
                self._csv = open(self.config.out, "a", encoding="utf-8", newline="")
            except OSError as err:
                raise OutputError(self.config.out, describe(err)) from err
        self._last_rewrite = time.monotonic()
        self._dirty = False

    def _maybe_rewrite(self, store: ResultStore) -> None:
        """Rewrite the outputs every ``xlsx_every`` seconds while results arrive: an .xlsx output, a CSV's
        specimens and cell tables and run metadata (the CSV itself is appended row by row), and the report."""
        if not self._dirty:
            return
        if time.monotonic() - self._last_rewrite >= self.config.xlsx_every:
            self._rewrite(store)

    def _rewrite(self, store: ResultStore) -> None:
        """Rewrite the outputs while watching. One that cannot be written now (a workbook open in Excel on a share
        cannot be replaced) is said and tried again at the next rewrite while scoring goes on: the store keeps every
        row, and the stop writes them all (or ends with exit 3 if it still cannot)."""
        try:
            self._write_all(store)
        except OutputError as err:
            self._last_rewrite, self._dirty = time.monotonic(), True
            self.stats.output_notice = (f"{err}; scoring goes on, and the outputs are written again in "
                                        f"{self.config.xlsx_every:g} s")
            return
        self.stats.output_notice = ""


class _Relay:
    """Passes each stored result to the watcher (append, move) and then to the user's observer."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def start(self, total: int) -> None:
        pass

    def result(self, result: ImageResult, skipped: bool) -> None:
        self.watcher.stored(result)
        if self.watcher.observer is not None:
            self.watcher.observer.result(result, skipped)


def _resolved(path: Path | str) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(path)


def _watch_path(folder: Path) -> str:
    """The folder as the observer is given it: with a trailing separator, so that a folder given as a link (to a
    share, say) is watched through the link; inotify watched the link itself, and no event came."""
    return os.path.join(folder, "")


def _present(path: Path) -> bool:
    """Whether ``path`` is there; on a share that cannot say now (EIO, ESTALE) it is, and is tried again."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _is_dir(folder: Path) -> bool:
    """Whether ``folder`` is a folder now: a share that went stale or stopped answering (ESTALE, EIO) is not."""
    try:
        return folder.is_dir()
    except OSError:
        return False


def _changed_since(path: Path, recorded: datetime | None) -> bool:
    """Whether ``path`` has no row (``recorded`` None) or was written after its row was recorded (replaced
    while no watch ran). Its status-change time counts too: a copy that keeps the original's modification time
    (``cp -p``, ``rsync -a``, a copy in Windows Explorer) is newer by that alone; an unchanged file this queues is
    found already scored by its content."""
    if recorded is None:
        return True
    try:
        st = path.stat()
    except OSError:
        return False
    return max(st.st_mtime, st.st_ctime) > recorded.timestamp() + 1  # rows are recorded to the second


def _in_hidden_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a hidden folder below ``root`` (``.Trash-1000``, ``.snapshot``), which the
    catch-up pass and ``predict`` never look in."""
    folder = Path(path).parent
    for inner, outer in ((folder, Path(root)), (_resolved(folder), _resolved(root))):
        if inner.is_relative_to(outer):
            return any(part.startswith(".") for part in inner.relative_to(outer).parts)
    return False


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and Path(path).resolve().is_relative_to(Path(folder).resolve())
