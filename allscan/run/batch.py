"""Scoring a set of image files with the ensemble: the job ``allscan predict`` runs.

Each image goes through two steps that every engine calls: :func:`prepare` (CPU:
read, hash, decode, cut into model fields at the training scale) and
:func:`score_prepared` (the models, the aggregation rule, a site profile's heads and
the out-of-domain guard; no store). An engine (:mod:`allscan.run.engines`) runs them, locally on threads
or on a Ray cluster, and hands the results to a :class:`Scorer`, which commits each
batch to the store before it is reported; the CSV/Excel output is written from the
store at the end (and on Ctrl-C), so no result is ever held only in memory.
"""

import hashlib
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from allscan import __version__
from allscan.domain.fields import FieldMaker, FieldSet, in_original_pixels
from allscan.scoring.pipeline import DomainPipeline, as_pipeline
from allscan.run.engines.local import LocalEngine
from allscan.scoring.heatmaps import HeatmapOptions, display_copy, write_heatmaps
from allscan.images import DECODE_MAX_SIDE, ImageError, decode_array, decode_bytes, find_images, read_file
from allscan.results.types import ImageResult, RunCounts
from allscan.results.store import ResultStore, store_path_for
from allscan.results.report import write_report
from allscan.results.tables import RunInfo, check_output_suffix, sidecar_path, write_results

if TYPE_CHECKING:
    from allscan.run.engines import Engine
    from allscan.models.ensemble import Ensemble

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
    """One file read, hashed and, unless already scored, decoded and cut into model fields."""

    path: Path
    sha256: str = ""
    width: int | None = None
    height: int | None = None
    fields: FieldSet | None = None
    error: str = ""
    known: bool = False
    display: np.ndarray | None = None


def prepare(source: Path | np.ndarray, maker: FieldMaker, known: set[str] | frozenset[str] = frozenset(),
            keep_display: bool = False, name: Path | str | None = None) -> Prepared:
    """Read and decode one image and cut it into fields; an unreadable one becomes a Prepared with
    ``error`` set.

    Args:
        source: An image file, or an in-memory RGB uint8 array of shape ``(height, width, 3)``.
        maker: Cuts a decoded image into model fields (scale, stain, tiling).
        known: Contents (sha256) already scored: such an image is not decoded further.
        keep_display: Keep a reduced copy of the image for heatmap figures.
        name: The path its row shows [default: ``source`` for a file, ``array`` for an array].
    """
    path = Path(name if name is not None else "array" if isinstance(source, np.ndarray) else source)
    if isinstance(source, np.ndarray):
        try:
            decoded = decode_array(source, path)
        except ImageError as err:
            return Prepared(path, error=str(err))
    else:
        try:
            data = read_file(Path(source))
        except ImageError as err:
            return Prepared(path, error=str(err))
        try:
            decoded = decode_bytes(data, path, max_side=DECODE_MAX_SIDE)
        except ImageError as err:
            return Prepared(path, sha256=hashlib.sha256(data).hexdigest(), error=str(err))
    if decoded.sha256 in known:
        return Prepared(path, decoded.sha256, decoded.width, decoded.height, known=True)
    fields = in_original_pixels(maker(decoded.rgb), decoded.reduction)
    display = display_copy(decoded.rgb) if keep_display else None
    return Prepared(path, decoded.sha256, decoded.width, decoded.height, fields, display=display)


def score_prepared(pipeline: DomainPipeline, batch: Sequence[Prepared], heatmaps: HeatmapOptions | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[ImageResult]:
    """Score a batch of prepared images, their fields ``batch_size`` at a time, writing no store: one
    result per item, in order.

    An item with ``error`` becomes its error row; every other item must hold its fields
    (content already scored is looked up in the store by the caller, not passed here).
    """
    scorable = [p for p in batch if not p.error]
    results: dict[int, ImageResult] = {}
    if scorable:
        scores = pipeline.score([p.fields for p in scorable], batch_size)
        figures = _heatmaps(pipeline, heatmaps, scorable, scores)
        results = {id(p): ImageResult(p.path, p.sha256, p.width, p.height, s, heatmap=figures.get(i, ""))
                   for i, (p, s) in enumerate(zip(scorable, scores))}
    return [results.get(id(p)) or ImageResult(p.path, p.sha256, error=p.error) for p in batch]


def _heatmaps(pipeline: DomainPipeline, options: HeatmapOptions | None, batch: list[Prepared],
              scores) -> dict[int, str]:
    if options is None:
        return {}
    chosen = [i for i, s in enumerate(scores) if options.wanted(s)]
    if not chosen:
        return {}
    paths = write_heatmaps(
        pipeline,
        [batch[i].fields for i in chosen],
        [batch[i].display for i in chosen],
        [batch[i].path for i in chosen],
        [batch[i].sha256 for i in chosen],
        [scores[i] for i in chosen],
        options.folder,
    )
    return dict(zip(chosen, paths))


@dataclass(frozen=True)
class Job:
    """The per-image work of a run, picklable so that an engine can ship it to other processes.

    Engines call :meth:`prepare` and the function :meth:`scoring` returns, and never look
    inside a :class:`Prepared`: how an image becomes model inputs is decided here.

    Attributes:
        models_dir: The models folder (the same path on every node of a cluster).
        digest: The driver's results digest (models, site profile, options); a node that would
            score differently refuses to.
        maker: Cuts decoded images into model fields (domain reference, options, input sizes).
        site: The site profile folder, or None.
        batch_size: Fields per model call.
        heatmaps: Grad-CAM figures to write, or None.
        rescore: Score again what the store already holds.
    """

    models_dir: Path
    digest: str
    maker: FieldMaker
    site: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    heatmaps: HeatmapOptions | None = None
    rescore: bool = False

    @classmethod
    def of(cls, pipeline: DomainPipeline, batch_size: int = DEFAULT_BATCH_SIZE,
           heatmaps: HeatmapOptions | None = None, rescore: bool = False) -> "Job":
        return cls(pipeline.ensemble.models_dir, pipeline.digest, pipeline.maker, pipeline.site_dir, batch_size,
                   heatmaps, rescore)

    def prepare(self, source: Path | np.ndarray, known: frozenset[str] = frozenset(),
                name: Path | str | None = None) -> Prepared:
        return prepare(source, self.maker, known, self.heatmaps is not None, name)

    def for_workers(self) -> "Job":
        """This job with absolute paths, for processes that may run in another folder or on another node."""
        heatmaps = replace(self.heatmaps, folder=Path(self.heatmaps.folder).resolve()) if self.heatmaps else None
        site = Path(self.site).resolve() if self.site else None
        return replace(self, models_dir=Path(self.models_dir).resolve(), heatmaps=heatmaps, site=site)

    def scoring(self) -> Callable[[Sequence[Prepared]], list[ImageResult]]:
        """Load the models (once per process that scores) and return the scoring step.

        Raises:
            ManifestError: The models folder is unusable here or holds other models than the driver's.
        """
        from allscan.models.manifest import ManifestError

        pipeline = DomainPipeline.load(self.models_dir, self.site, self.maker.options)
        if pipeline.digest != self.digest:
            raise ManifestError(f"the models in {self.models_dir} (results digest {pipeline.digest}) are not the"
                                f" driver's (digest {self.digest})")
        return partial(score_prepared, pipeline, heatmaps=self.heatmaps, batch_size=self.batch_size)


@dataclass(frozen=True)
class PredictSummary:
    """What a predict run did; ``exit_code`` is 0 when every image was scored, 1 when some failed."""

    out: Path
    store: Path
    counts: RunCounts
    interrupted: bool = False
    images: tuple[Path, ...] = ()

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.counts.errors else 0


class Scorer:
    """Scores prepared images in batches and commits each batch to the store before reporting it."""

    def __init__(self, pipeline: DomainPipeline, store: ResultStore, batch_size: int, observer: Observer,
                 heatmaps: HeatmapOptions | None = None):
        self.pipeline = pipeline
        self.heatmaps = heatmaps
        self.store = store
        self.batch_size = batch_size
        self.observer = observer
        self.pending: list[Prepared] = []
        self.counts = RunCounts()

    def add(self, item: Prepared) -> None:
        if item.error:
            self.commit([ImageResult(item.path, item.sha256, error=item.error)], skipped=False)
            return
        if item.known or item.fields is None:
            score = self.store.score_for(item.sha256)
            if score is not None:
                result = ImageResult(item.path, item.sha256, item.width, item.height, score)
                self.commit([result], skipped=True)
                return
        self.pending.append(item)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.commit(score_prepared(self.pipeline, batch, self.heatmaps, self.batch_size))

    def already_stored(self, result: ImageResult) -> None:
        """Report a row the store already holds for this path, without scoring or writing it again."""
        self.counts.add(result, skipped=True)
        self.observer.result(result, True)

    def commit(self, results: list[ImageResult], skipped: bool = False) -> None:
        """Store a batch of results (durable on return), then count and report them."""
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


def run_info(pipeline: DomainPipeline, started: datetime, counts: RunCounts, command: str | None = None) -> RunInfo:
    manifest = pipeline.ensemble.manifest
    config = pipeline.site.ensemble if pipeline.site else manifest.ensemble
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
        threshold=config.threshold,
        review_band=config.review_band,
        counts={
            "images": counts.done,
            "ALL": counts.all_,
            "normal": counts.normal,
            "review": counts.review,
            "out of domain": counts.out_of_domain,
            "errors": counts.errors,
            "skipped (already scored)": counts.skipped,
        },
        results_digest=pipeline.digest,
        domain=pipeline.describe(),
    )


def write_outputs(out: Path, store: ResultStore, images: list[Path], pipeline: DomainPipeline, started: datetime,
                  skipped: int = 0, command: str | None = None, report: Path | None = None) -> RunCounts:
    """Write the results file (and the HTML report, if asked) for ``images`` from the store."""
    counts = RunCounts(total=len(images))
    for result in store.results(images):
        counts.add(result)
    counts.skipped = skipped
    info = run_info(pipeline, started, counts, command)
    write_results(out, lambda: store.results(images), info, counts)
    if report is not None:
        write_report(report, store.results(images), info, counts)
    return counts


def predict(
    inputs: Sequence[Path],
    out: Path,
    scoring: "Ensemble | DomainPipeline",
    recursive: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    rescore: bool = False,
    observer: Observer | None = None,
    command: str | None = None,
    heatmaps: HeatmapOptions | None = None,
    report: Path | None = None,
    engine: "Engine | None" = None,
) -> PredictSummary:
    """Score every image in ``inputs`` and write ``out`` (.csv or .xlsx), and optionally an HTML report.

    ``scoring`` is a :class:`DomainPipeline` (models, domain options, site profile) or a bare
    ensemble, scored with the default options and no site profile. ``engine`` runs the
    per-image steps [default: this process, ``workers`` threads decoding].

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
    pipeline = as_pipeline(scoring)
    with ResultStore(store_file, pipeline.digest) as store:
        scorer = Scorer(pipeline, store, batch_size, observer, heatmaps)
        job = Job.of(pipeline, batch_size, heatmaps, rescore)
        observer.start(len(images))
        interrupted = False
        try:
            (engine or LocalEngine(workers)).run(images, job, scorer)
        except KeyboardInterrupt:
            interrupted = True
        counts = write_outputs(out, store, images, pipeline, started, scorer.counts.skipped, command, report)
    return PredictSummary(out, store_file, counts, interrupted, tuple(images))
