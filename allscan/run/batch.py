"""The ``allscan predict`` run: every image of some files and folders through the store into a CSV or
workbook (and an HTML report).

An engine (:mod:`allscan.run.engines`) runs the job's per-image steps (:mod:`allscan.run.job`),
locally on threads or on a Ray cluster, and hands the results to a
:class:`~allscan.run.committer.Committer`, which commits each batch to the store before it is
reported; the output files are written from the store at the end (and on Ctrl-C), so no result
is ever held only in memory.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from allscan.images import OTHER_IMAGE_SUFFIXES, find_images, unread_images
from allscan.paths import check_output_suffix, path_text, sidecar_path, store_path_for
from allscan.results.pdf import PdfReport
from allscan.results.store import ResultStore
from allscan.results.types import RunCounts
from allscan.run.committer import Committer, Observer, Silent
from allscan.run.engines import Engine
from allscan.run.engines.local import LocalEngine
from allscan.run.job import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Job
from allscan.run.outputs import write_outputs
from allscan.run.specimens import Specimens
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.scoring.pipeline import Pipeline, as_pipeline

if TYPE_CHECKING:
    from allscan.models.ensemble import Ensemble


@dataclass(frozen=True)
class RunSummary:
    """What a predict run did; ``exit_code`` is 0 when every image was scored, 1 when some failed."""

    out: Path
    store: Path
    counts: RunCounts
    interrupted: bool = False
    images: tuple[Path, ...] = ()
    unread: tuple[tuple[str, int], ...] = ()
    """Files in image formats allscan does not read, left out of the run: ``(suffix, count)``, most first."""
    cells: bool = False
    """Whether the white cells were looked for (``counts.cells`` is then how many were found, maybe none)."""
    left_out: tuple[str, ...] = ()
    """Files named among the inputs that the run did not take (no image suffix, hidden, allscan's own), as text;
    those in :data:`~allscan.images.OTHER_IMAGE_SUFFIXES` are counted in ``unread`` instead."""
    unplaced: tuple[int, str] = (0, "")
    """How many images the specimen pattern or map did not place, and the note their rows carry."""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.counts.errors else 0


def run_batch(
    inputs: Sequence[Path],
    out: Path,
    scoring: "Ensemble | Pipeline",
    recursive: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    rescore: bool = False,
    observer: Observer | None = None,
    command: str | None = None,
    heatmaps: HeatmapOptions | None = None,
    report: Path | None = None,
    engine: Engine | None = None,
    specimens: Specimens | None = None,
    pdf: PdfReport | None = None,
    cells_geojson: Path | None = None,
) -> RunSummary:
    """Score every image in ``inputs`` and write ``out`` (.csv or .xlsx), and optionally an HTML report.

    ``scoring`` is a :class:`~allscan.scoring.pipeline.Pipeline` (models, domain options, site
    profile) or a bare ensemble, scored with the default options and no site profile. ``engine``
    runs the per-image steps [default: this process, ``workers`` threads decoding]; ``specimens``
    assigns images to specimens [default: by folder, relative to the input it was found under]; ``pdf``
    asks for the printable report; ``cells_geojson`` is a folder for each image's cells as GeoJSON.

    Raises:
        FileNotFoundError: An input path does not exist.
        ValueError: ``out`` has an unknown suffix.
    """
    out = Path(out)
    check_output_suffix(out)
    observer = observer or Silent()
    store_file = store_path_for(out)
    images = find_images(inputs, recursive, exclude=[out, store_file, sidecar_path(out)])
    started = datetime.now().astimezone()
    pipeline = as_pipeline(scoring)
    specimens = (specimens or Specimens(inputs)).with_images(images)
    with ResultStore(store_file, pipeline.digest) as store:
        committer = Committer(pipeline, store, batch_size, observer, heatmaps, specimens, cells_geojson)
        job = Job.of(pipeline, batch_size, heatmaps, rescore)
        observer.start(len(images))
        interrupted = False
        try:
            (engine or LocalEngine(workers)).run(images, job, committer)
        except KeyboardInterrupt:
            interrupted = True
        counts = write_outputs(out, store, images, pipeline, started, committer.counts.skipped, command, report,
                               specimens, pdf)
    return RunSummary(out, store_file, counts, interrupted, tuple(images),
                      tuple(unread_images(inputs, recursive).most_common()), pipeline.cells is not None,
                      _left_out(inputs, images), specimens.unplaced(images))


def _left_out(inputs: Sequence[Path], images: list[Path]) -> tuple[str, ...]:
    """The files named in ``inputs`` that are not among ``images`` nor in a format allscan does not read."""
    taken = set(images)
    return tuple(dict.fromkeys(path_text(path) for path in map(Path, inputs) if path.is_file() and path not in taken
                               and path.suffix.lower() not in OTHER_IMAGE_SUFFIXES))
