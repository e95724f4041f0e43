"""Scoring a set of image files with the ensemble: the job ``allscan predict`` runs.

Files are read and decoded on worker threads while the models run on the main
thread; each batch's results are committed to the store before they are
reported, and the CSV/Excel output is written from the store at the end (and on
Ctrl-C), so no result is ever held only in memory.
"""

import hashlib
import platform
import shlex
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from allscan import __version__
from allscan.ensemble import Ensemble
from allscan.heatmaps import HeatmapOptions, display_copy, write_heatmaps
from allscan.images import ImageError, decode_bytes, find_images, resize
from allscan.results import ImageResult, RunCounts
from allscan.store import ResultStore, store_path_for
from allscan.report import write_report
from allscan.writers import RunInfo, check_output_suffix, sidecar_path, write_results

DEFAULT_BATCH_SIZE = 16
DEFAULT_WORKERS = 2


class Observer(Protocol):
    """Receives progress: the live display implements it; tests may record it."""

    def start(self, total: int) -> None: ...

    def result(self, result: ImageResult, skipped: bool) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def result(self, result: ImageResult, skipped: bool) -> None:
        pass


@dataclass(frozen=True)
class Prepared:
    """One file read, hashed and, unless already scored, decoded and resized for each model."""

    path: Path
    sha256: str = ""
    width: int | None = None
    height: int | None = None
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    error: str = ""
    known: bool = False
    display: np.ndarray | None = None


def prepare(path: Path, sizes: Sequence[int], known: set[str] | frozenset[str], keep_display: bool = False) -> Prepared:
    """Read and decode ``path``; an unreadable file becomes a Prepared with ``error`` set.

    With ``keep_display`` a reduced copy of the image is kept for heatmap figures.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return Prepared(path, error=f"cannot read file: {err.strerror or err}")
    try:
        decoded = decode_bytes(data, path)
    except ImageError as err:
        return Prepared(path, sha256=hashlib.sha256(data).hexdigest(), error=str(err))
    if decoded.sha256 in known:
        return Prepared(path, decoded.sha256, decoded.width, decoded.height, known=True)
    inputs = {size: resize(decoded.rgb, size) for size in sizes}
    display = display_copy(decoded.rgb) if keep_display else None
    return Prepared(path, decoded.sha256, decoded.width, decoded.height, inputs, display=display)


@dataclass(frozen=True)
class PredictSummary:
    """What a predict run did; ``exit_code`` is 0 when every image was scored, 1 when some failed."""

    out: Path
    store: Path
    counts: RunCounts
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.counts.errors else 0


class Scorer:
    """Scores prepared images in batches and commits each batch to the store before reporting it."""

    def __init__(self, ensemble: Ensemble, store: ResultStore, batch_size: int, observer: Observer,
                 heatmaps: HeatmapOptions | None = None):
        self.ensemble = ensemble
        self.heatmaps = heatmaps
        self.store = store
        self.batch_size = batch_size
        self.observer = observer
        self.pending: list[Prepared] = []
        self.counts = RunCounts()

    def add(self, item: Prepared) -> None:
        if item.error:
            self._commit([ImageResult(item.path, item.sha256, error=item.error)], skipped=False)
            return
        if item.known or not item.inputs:
            score = self.store.score_for(item.sha256)
            if score is not None:
                result = ImageResult(item.path, item.sha256, item.width, item.height, score)
                self._commit([result], skipped=True)
                return
        self.pending.append(item)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        stacked = {size: np.stack([p.inputs[size] for p in batch]) for size in self.ensemble.input_sizes}
        scores = self.ensemble.score(stacked)
        figures = self._heatmaps(batch, stacked, scores)
        results = [ImageResult(p.path, p.sha256, p.width, p.height, s, heatmap=figures.get(i, ""))
                   for i, (p, s) in enumerate(zip(batch, scores))]
        self._commit(results, skipped=False)

    def _heatmaps(self, batch: list[Prepared], stacked: dict[int, np.ndarray], scores) -> dict[int, str]:
        if self.heatmaps is None:
            return {}
        chosen = [i for i, s in enumerate(scores) if self.heatmaps.wanted(s)]
        if not chosen:
            return {}
        paths = write_heatmaps(
            self.ensemble,
            {size: x[chosen] for size, x in stacked.items()},
            [batch[i].display for i in chosen],
            [batch[i].path for i in chosen],
            [batch[i].sha256 for i in chosen],
            [scores[i] for i in chosen],
            self.heatmaps.folder,
        )
        return dict(zip(chosen, paths))

    def _commit(self, results: list[ImageResult], skipped: bool) -> None:
        firsts: dict[str, str] = {}
        results = [self._mark_duplicate(r, firsts) for r in results]
        self.store.add(results)
        for result in results:
            self.counts.add(result, skipped)
            self.observer.result(result, skipped)

    def _mark_duplicate(self, result: ImageResult, batch_firsts: dict[str, str]) -> ImageResult:
        """Mark a file whose content was already stored (or seen earlier in this batch) under another path."""
        if result.score is None:
            return result
        first = self.store.first_path_for(result.sha256) or batch_firsts.setdefault(result.sha256, str(result.path))
        if first == str(result.path):
            return result
        return replace(result, duplicate_of=first)


def iter_prepared(paths: Iterable[Path], sizes: Sequence[int], known, workers: int, window: int,
                  keep_display: bool = False):
    """Prepare files on ``workers`` threads, at most ``window`` ahead, yielding in input order."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="allscan-decode") as pool:
        queue: deque[Future] = deque()
        for path in paths:
            queue.append(pool.submit(prepare, path, sizes, known, keep_display))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def run_info(ensemble: Ensemble, started: datetime, counts: RunCounts, command: str | None = None) -> RunInfo:
    manifest = ensemble.manifest
    return RunInfo(
        allscan_version=__version__,
        started=started.isoformat(timespec="seconds"),
        finished=datetime.now().astimezone().isoformat(timespec="seconds"),
        host=platform.node(),
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
        models_digest=manifest.digest,
        models=[
            {"name": m.name, "file": m.file, "sha256": m.sha256, "weight": manifest.ensemble.weights.get(m.name, 0.0)}
            for m in manifest.models.values()
        ],
        threshold=manifest.ensemble.threshold,
        review_band=manifest.ensemble.review_band,
        counts={
            "images": counts.done,
            "ALL": counts.all_,
            "normal": counts.normal,
            "review": counts.review,
            "errors": counts.errors,
            "skipped (already scored)": counts.skipped,
        },
    )


def write_outputs(out: Path, store: ResultStore, images: list[Path], ensemble: Ensemble, started: datetime,
                  skipped: int = 0, command: str | None = None, report: Path | None = None) -> RunCounts:
    """Write the results file (and the HTML report, if asked) for ``images`` from the store."""
    counts = RunCounts(total=len(images))
    for result in store.results(images):
        counts.add(result)
    counts.skipped = skipped
    info = run_info(ensemble, started, counts, command)
    write_results(out, lambda: store.results(images), info, counts)
    if report is not None:
        write_report(report, store.results(images), info, counts)
    return counts


def predict(
    inputs: Sequence[Path],
    out: Path,
    ensemble: Ensemble,
    recursive: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    rescore: bool = False,
    observer: Observer | None = None,
    command: str | None = None,
    heatmaps: HeatmapOptions | None = None,
    report: Path | None = None,
) -> PredictSummary:
    """Score every image in ``inputs`` and write ``out`` (.csv or .xlsx), and optionally an HTML report.

    Raises:
        FileNotFoundError: An input path does not exist.
        ValueError: ``out`` has an unknown suffix.
    """
    out = Path(out)
    check_output_suffix(out)
    observer = observer or _Silent()
    store_file = store_path_for(out)
    images = find_images(inputs, recursive, exclude=[out, store_file, sidecar_path(out)],
                         exclude_dirs=[heatmaps.folder] if heatmaps else [])
    started = datetime.now().astimezone()
    with ResultStore(store_file, ensemble.manifest.digest) as store:
        known = frozenset() if rescore else store.scored_hashes()
        scorer = Scorer(ensemble, store, batch_size, observer, heatmaps)
        observer.start(len(images))
        interrupted = False
        try:
            for item in iter_prepared(images, ensemble.input_sizes, known, workers, window=2 * batch_size,
                                      keep_display=heatmaps is not None):
                scorer.add(item)
            scorer.flush()
        except KeyboardInterrupt:
            interrupted = True
        counts = write_outputs(out, store, images, ensemble, started, scorer.counts.skipped, command, report)
    return PredictSummary(out, store_file, counts, interrupted)
