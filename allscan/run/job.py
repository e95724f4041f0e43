"""The per-image work of a run: :func:`prepare` (CPU: read, hash, decode, cut into model fields at the
training scale) and :func:`to_results` (the scoring pipeline over a batch, heatmaps if asked; no store).

A :class:`Job` bundles what both steps need so that an engine can run them anywhere: on this
process's threads or on a Ray cluster. No step here writes the results store: a
:class:`~allscan.run.committer.Committer` does.
"""

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from allscan.domain.fields import FieldMaker, FieldSet, in_original_pixels
from allscan.images import DECODE_MAX_SIDE, ImageError, decode_array, decode_bytes, read_file
from allscan.models.manifest import ManifestError
from allscan.models.runtime import limit_threads
from allscan.results.types import ImageResult
from allscan.scoring.heatmaps import HeatmapOptions, display_copy, write_heatmaps
from allscan.scoring.pipeline import Pipeline

DEFAULT_BATCH_SIZE = 16
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class Source:
    """An image to score: a file, or an in-memory RGB uint8 array, and the path its row shows."""

    data: Path | np.ndarray
    name: str

    @classmethod
    def file(cls, path: Path | str) -> "Source":
        return cls(Path(path), str(path))


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
    try:
        fields = in_original_pixels(maker(decoded.rgb), decoded.reduction, (decoded.width, decoded.height))
    except ImageError as err:
        return Prepared(path, sha256=decoded.sha256, error=str(err))
    if decoded.pages > 1:
        fields = replace(fields, notes=(*fields.notes, f"only the first of its {decoded.pages} pages was scored"))
    display = display_copy(decoded.rgb) if keep_display else None
    return Prepared(path, decoded.sha256, decoded.width, decoded.height, fields, display=display)


def to_results(pipeline: Pipeline, batch: Sequence[Prepared], heatmaps: HeatmapOptions | None = None,
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


def _heatmaps(pipeline: Pipeline, options: HeatmapOptions | None, batch: list[Prepared], scores) -> dict[int, str]:
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
        [(batch[i].width, batch[i].height) for i in chosen],
    )
    return dict(zip(chosen, paths))


def iter_prepared(sources: Iterable[Source], prepare_one: Callable[[Source], Prepared], workers: int,
                  window: int) -> Iterator[Prepared]:
    """Prepare images on ``workers`` threads, at most ``window`` ahead, yielding in input order."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="allscan-decode") as pool:
        queue: deque[Future] = deque()
        for source in sources:
            queue.append(pool.submit(prepare_one, source))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


@dataclass(frozen=True)
class Job:
    """The per-image work of a run, picklable so that an engine can ship it to other processes.

    Engines call :meth:`prepare` and the function :meth:`worker` returns, and never look
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
        runtime: The runtime the driver chose (``keras`` or ``openvino``): every node scores with it.
        cells_runtime: Likewise for the cell classifier, which may lack OpenVINO files the field models have.
        member_runtimes: What runs each member on the driver (``openvino bf16``; cell members as
            ``cells/NAME``), to say why a node that would score differently refuses.
    """

    models_dir: Path
    digest: str
    maker: FieldMaker
    site: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    heatmaps: HeatmapOptions | None = None
    rescore: bool = False
    runtime: str = "auto"
    cells_runtime: str = "auto"
    member_runtimes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, pipeline: Pipeline, batch_size: int = DEFAULT_BATCH_SIZE,
           heatmaps: HeatmapOptions | None = None, rescore: bool = False) -> "Job":
        cells_runtime = pipeline.cells.ensemble.runtime if pipeline.cells is not None else "auto"
        return cls(pipeline.ensemble.models_dir, pipeline.digest, pipeline.maker, pipeline.site_dir, batch_size,
                   heatmaps, rescore, pipeline.ensemble.runtime, cells_runtime, _member_runtimes(pipeline))

    def prepare(self, source: Source | Path, known: frozenset[str] = frozenset()) -> Prepared:
        source = source if isinstance(source, Source) else Source.file(source)
        return prepare(source.data, self.maker, known, self.heatmaps is not None, source.name)

    def for_workers(self) -> "Job":
        """This job with absolute paths, for processes that may run in another folder or on another node."""
        heatmaps = replace(self.heatmaps, folder=Path(self.heatmaps.folder).resolve()) if self.heatmaps else None
        site = Path(self.site).resolve() if self.site else None
        return replace(self, models_dir=Path(self.models_dir).resolve(), heatmaps=heatmaps, site=site)

    def worker(self, threads: int | None = None) -> Callable[[Sequence[Prepared]], list[ImageResult]]:
        """Load the models (once per process that scores) and return the step that turns prepared
        batches into results.

        Args:
            threads: The CPU threads the models may run on [default: every core]. TensorFlow is imported only
                where a model runs in Keras: a Ray actor scoring with OpenVINO alone held 0.7 GB without it
                against 1.2 GB with it, and started 2-4 s sooner.

        Raises:
            ManifestError: The models folder is unusable here or holds other models than the driver's.
        """
        if threads is not None:
            limit_threads(threads, {self.runtime, self.cells_runtime})
        pipeline = Pipeline.load(self.models_dir, self.site, self.maker.options, runtime=self.runtime,
                                 cells_runtime=self.cells_runtime)
        if pipeline.digest != self.digest:
            driver = dict(self.member_runtimes)
            differ = [f"{name} runs {here} here, {driver[name]} on the driver"
                      for name, here in _member_runtimes(pipeline) if driver.get(name, here) != here]
            reason = (f": {'; '.join(differ)} (a CPU without bfloat16 units runs bf16 members in fp32; score on"
                      " machines alike)" if differ else
                      f" (results digest {pipeline.digest} here, {self.digest} there)")
            raise ManifestError(f"this node would score other than the driver with the models in {self.models_dir}"
                                f"{reason}")
        return partial(to_results, pipeline, heatmaps=self.heatmaps, batch_size=self.batch_size)


def _member_runtimes(pipeline: Pipeline) -> tuple[tuple[str, str], ...]:
    """What runs each field member, and each cell member as ``cells/NAME``, in this process."""
    cells = pipeline.cells.ensemble.members if pipeline.cells is not None else []
    return (*((m.name, m.runtime) for m in pipeline.ensemble.members),
            *((f"cells/{m.name}", m.runtime) for m in cells))
