"""The Python API: score images into a pandas DataFrame, with the models loaded once.

    import allscan
    df = allscan.predict(["slides/"])                 # writes nothing
    screener = allscan.load(site="lab-profile/")      # load the ensemble (and a site profile) once
    df = screener.predict([rgb_array, "field.png"])   # files, folders or RGB uint8 arrays
    df = screener.predict(["slides/"], out="r.csv")   # as `allscan predict`: store, resume, CSV/Excel
    df, cells = screener.predict(["slides/"], cells=True)  # and one row per white cell
    df = allscan.read_results("r.csv")                # or .xlsx, or r.csv.allscan.sqlite
    df, cells = allscan.read_results("r.csv", cells=True)

The ``allscan predict`` command runs :meth:`Screener.run`, the same path as ``out=``.
"""

import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from allscan.domain.fields import DomainOptions
from allscan.domain.site import CELLS, FIELDS, load_profile, profile_name
from allscan.images import find_images
from allscan.models.runtime import check_runtime
from allscan.paths import default_models_dir
from allscan.results.frames import cells_frame, read_results, results_frame
from allscan.results.pdf import PdfReport
from allscan.results.store import ResultStore
from allscan.run.batch import RunSummary, run_batch
from allscan.run.committer import Committer, MemoryResults, Observer
from allscan.run.engines import Engine, LocalEngine, make_engine
from allscan.run.job import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Job, Source
from allscan.run.preflight import check_images_found, check_outputs, leaving_no_trace
from allscan.run.specimens import Specimens
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.scoring.pipeline import Pipeline, as_pipeline, settle

__all__ = ["Screener", "load", "predict", "read_results"]

ImageInput = str | Path | np.ndarray
"""An image file, a folder of them, or an RGB uint8 array of shape ``(height, width, 3)``."""
Frames = pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]
"""The results, or with ``cells=True`` the results and their cells."""


class Screener:
    """The ensemble (with its domain handling and any site profile), loaded once, scoring files,
    folders or in-memory images into DataFrames."""

    def __init__(self, scoring):
        self.pipeline = as_pipeline(scoring)
        self.ensemble = self.pipeline.ensemble

    def predict(self, images: ImageInput | Iterable[ImageInput], out: Path | str | None = None, *,
                names: Sequence[str] | None = None, recursive: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                workers: int = DEFAULT_WORKERS, rescore: bool = False, engine: str | Engine = "local",
                cells: bool = False) -> Frames:
        """Score images and return one row per image with the columns of :data:`allscan.results.types.COLUMNS`;
        with ``cells``, return ``(results, cells)``, ``cells`` holding one row per white cell of those images in
        the results' order (:data:`allscan.results.types.CELL_COLUMNS`; empty when the screener does not look
        for cells).

        Without ``out`` nothing is written and rows follow the input order (a folder's
        images sorted by path); an image that cannot be scored is an error row, and a
        repeated content is marked ``duplicate_of`` its first occurrence.

        With ``out`` (.csv or .xlsx) the run is exactly ``allscan predict``: results go to
        the store beside it first (a rerun skips what it holds), then ``out`` is written;
        the rows returned are the ones written. ``engine`` (``local``, ``ray`` or an
        engine object) applies to this case only.

        Args:
            images: Files, folders, RGB uint8 arrays, or one of them.
            out: Results file to write, or None.
            names: The path shown for each array, in order [default: ``array-<i>``, ``i`` its position].
            recursive: Scan sub-folders.
            batch_size: Images per model call.
            workers: Threads reading and decoding images.
            rescore: With ``out``: score again what the store already holds.
            engine: With ``out``: the engine that runs the job.
            cells: Also return the white cells as a second DataFrame.

        Without ``out``, files and arrays are judged alike: a path that does not exist, like an
        array that is not an RGB image or is under 64 pixels a side, is an error row, and the
        other items are scored.

        Raises:
            TypeError: An input that is not a file, folder or array (a path given as ``bytes`` included).
            FileNotFoundError: With ``out``: a path does not exist.
            ValueError: ``batch_size`` or ``workers`` under 1, ``out`` has an unknown suffix, arrays or an engine
                where they do not apply (or an engine that cannot run here, an
                :class:`~allscan.run.engines.base.EngineError`),
                or ``names`` does not fit the arrays; with ``out``, as ``allscan predict`` refuses before it
                loads the models (a :class:`~allscan.run.preflight.PreflightError`): no image among the inputs,
                an existing ``out`` that allscan did not write, an output that cannot be written.
            KeyboardInterrupt: The run with ``out`` was interrupted (what was scored is written).
        """
        if batch_size < 1 or workers < 1:
            raise ValueError(f"batch_size and workers must be at least 1, not {batch_size} and {workers}")
        items = _items(images)
        if out is None:
            _refuse_misfits(items, out, engine, recursive)
            sources = _sources(items, names, recursive)
            return _frames(self._score_in_memory(sources, items, batch_size, workers) if sources else [], cells)
        with leaving_no_trace([Path(out)]):  # a refused call leaves no output folder behind, as the command
            _refuse_misfits(items, out, engine, recursive)
            if isinstance(engine, str):
                engine = make_engine(engine, workers)
            summary = self.run(items, Path(out), recursive=recursive, batch_size=batch_size, workers=workers,
                               rescore=rescore, engine=engine)
        if summary.interrupted:
            raise KeyboardInterrupt
        with ResultStore(summary.store, self.pipeline.digest, writer=False) as store:
            return _frames(list(store.results(summary.images)), cells)

    def run(self, images: Sequence[Path], out: Path, *, recursive: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
            workers: int = DEFAULT_WORKERS, rescore: bool = False, engine: Engine | None = None,
            observer: Observer | None = None, heatmaps: HeatmapOptions | None = None, report: Path | None = None,
            command: str | None = None, specimens: Specimens | None = None,
            pdf: PdfReport | None = None, cells_geojson: Path | None = None) -> RunSummary:
        """Run ``allscan predict``: score ``images`` (files and folders) through the store and write ``out``
        (and each image's cells as GeoJSON in ``cells_geojson``, if given)."""
        return run_batch(images, out, self.pipeline, recursive, batch_size, workers, rescore, observer, command,
                         heatmaps, report, engine, specimens, pdf, cells_geojson)

    def _score_in_memory(self, sources: list[Source], items: list[ImageInput], batch_size: int, workers: int) -> list:
        """The same engine and committer as a run, into memory: rows in the order of ``sources``, a file's with the
        specimen ``allscan predict`` gives it for the same ``items`` (its folder, by default; an array has none)."""
        files = {source.name: source.data for source in sources if isinstance(source.data, Path)}
        roots = [Path(item) for item in items if not isinstance(item, np.ndarray)]
        specimens = Specimens(roots).with_images(list(files.values()))
        sink = MemoryResults()
        LocalEngine(workers).run(sources, Job.of(self.pipeline, batch_size), Committer(self.pipeline, sink, batch_size))
        return [replace(row, specimen=specimens(files[str(row.path)]).specimen) if str(row.path) in files else row
                for row in sink.results([source.name for source in sources])]


def load(models: Path | str | None = None, site: Path | str | None = None, stain_norm: bool | None = None,
         rbc_diameter: float | None = None, runtime: str = "auto", find_cells: bool = True) -> Screener:
    """Load the ensemble in ``models`` [default: ``$ALLSCAN_MODELS`` or the shipped models] once,
    with a site profile made by ``allscan adapt`` [default: ``$ALLSCAN_SITE``, if set].

    With a site profile, ``stain_norm`` and ``rbc_diameter`` left at None and ``runtime`` ``auto`` are the
    ones it was fitted with; given, they must be.

    Args:
        models: Models folder.
        site: Site profile folder.
        stain_norm: Normalise the colour of images stained unlike the training images [default: True].
        rbc_diameter: Red-cell diameter in pixels in the images (overrides the estimate).
        runtime: What runs the models: ``auto`` (OpenVINO where the models ship converted), ``openvino``
            or ``keras``.
        find_cells: Find and judge the white cells (when the models come with a cell classifier).

    Raises:
        ManifestError: No models there, a model file that fails its checksum, or a site profile
            that is corrupt, was fitted on other models, or with another ``stain_norm``, ``rbc_diameter`` or
            ``runtime`` than given (a DomainError).
        ValueError: An unknown ``runtime``, an ``rbc_diameter`` that is not a number above 0, or a ``stain_norm``
            or ``find_cells`` that is not True or False.
    """
    site, origin = _site(site)
    options, given = _domain_options(stain_norm, rbc_diameter, find_cells)
    return Screener(Pipeline.load(models if models is not None else default_models_dir(), site, options,
                                  site_origin=origin, runtime=runtime, given=given))


def predict(images: ImageInput | Iterable[ImageInput], models: Path | str | None = None, out: Path | str | None = None,
            site: Path | str | None = None, runtime: str = "auto", stain_norm: bool | None = None,
            rbc_diameter: float | None = None, find_cells: bool = True, **options) -> Frames:
    """Load the models (and a site profile) and score ``images``: :func:`load` with its options, then
    :meth:`Screener.predict` with the others (``cells=True`` returns ``(results, cells)``). A call with
    nothing to score returns the empty frame(s) without loading the models, once its options and the site
    profile pass the checks :func:`load` makes.

    Raises:
        TypeError: An option that neither takes (a misspelt name), or an input that is not a file, folder or array.
        ValueError: As :func:`load` and :meth:`Screener.predict` raise it.
    """
    try:  # a misspelt option, before any work
        inspect.signature(Screener.predict).bind(None, images, out, **options)
    except TypeError as err:
        raise TypeError(f"allscan.predict(): {err}") from None
    items = _items(images)
    domain, given = _domain_options(stain_norm, rbc_diameter, find_cells)
    with leaving_no_trace([Path(out)] if out is not None else []):  # a refused call leaves no output folder
        _refuse_misfits(items, out, options.get("engine", "local"), options.get("recursive", True))
        if out is None and not _sources(items, options.get("names"), options.get("recursive", True)):
            check_runtime(runtime)
            folder, origin = _site(site)
            if folder is not None:  # as load refuses it: an option or runtime the profile was not fitted with
                profile = load_profile(Path(folder), origin)
                models_dir = Path(models if models is not None else default_models_dir())
                settle(profile, models_dir, domain, given, {FIELDS: runtime, CELLS: runtime},
                       profile_name(Path(folder), origin))
            return _frames([], options.get("cells", False))
        return load(models, site, stain_norm, rbc_diameter, runtime, find_cells).predict(items, out, **options)


def _domain_options(stain_norm: bool | None, rbc_diameter: float | None,
                    find_cells: bool) -> tuple[DomainOptions, list[str]]:
    """The domain options asked for, and the names of those given (a site profile settles the others).

    Raises:
        ValueError: ``stain_norm`` or ``find_cells`` is not True or False (NumPy's included: a string ``"false"``
            read from a settings file would count as true), or ``rbc_diameter`` is not a number above 0.
    """
    for name, value in (("stain_norm", stain_norm), ("find_cells", find_cells)):
        if not isinstance(value, bool | np.bool_) and not (name == "stain_norm" and value is None):
            raise ValueError(f"{name} must be True or False, not {value!r:.80}")
    given = [name for name, value in (("stain_norm", stain_norm), ("rbc_diameter", rbc_diameter)) if value is not None]
    return DomainOptions(bool(stain_norm) if stain_norm is not None else True, rbc_diameter, bool(find_cells)), given


def _site(site: Path | str | None) -> tuple[Path | str | None, str]:
    """The site profile folder to score with (``site``, else ``$ALLSCAN_SITE`` if set) and where it was named."""
    if site is not None:
        return site, ""
    return os.environ.get("ALLSCAN_SITE") or None, "$ALLSCAN_SITE"


def _frames(results: list, cells: bool) -> Frames:
    return (results_frame(results), cells_frame(results)) if cells else results_frame(results)


def _items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """The inputs as a list, each a file, a folder or an array.

    Raises:
        TypeError: An input of another type (a path as ``bytes`` included, which would read as numbers).
    """
    single = isinstance(images, str | bytes | os.PathLike | np.ndarray) or not isinstance(images, Iterable)
    items = [images] if single else list(images)
    wrong = [item for item in items if not isinstance(item, str | os.PathLike | np.ndarray)]
    if wrong:
        raise TypeError(f"images must be files, folders or RGB uint8 arrays (str, pathlib.Path or numpy.ndarray), "
                        f"or a list of them; not {type(wrong[0]).__name__} {wrong[0]!r:.80}")
    return items


def _refuse_misfits(items: list[ImageInput], out: Path | str | None, engine: str | Engine, recursive: bool) -> None:
    """Refuse, before any work, options that do not apply to the call, and with ``out`` what ``allscan
    predict`` refuses before it loads the models (a results file it did not write, inputs without an image)."""
    if out is None and engine != "local":
        raise ValueError("engine= applies to runs with out= only")
    if out is None:
        return
    if any(isinstance(item, np.ndarray) for item in items):
        raise ValueError("out= takes files and folders; score in-memory arrays without out=")
    paths = [Path(item) for item in items]
    if not paths:
        raise ValueError("out= given and nothing to score: name files or folders")
    missing = next((path for path in paths if not path.exists()), None)
    if missing is not None:
        raise FileNotFoundError(f"no such file or folder: {missing}")
    check_outputs(Path(out))
    check_images_found(paths, recursive)


def _sources(items: list[ImageInput], names: Sequence[str] | None, recursive: bool) -> list[Source]:
    """Each image with the path its row shows: folders expanded in place, arrays named; a named file stays as
    it is, read whatever its suffix (a file that is no image, or does not exist, becomes its error row)."""
    arrays = [i for i, item in enumerate(items) if isinstance(item, np.ndarray)]
    if names is not None and len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} arrays")
    array_names = dict(zip(arrays, names if names is not None else (f"array-{i}" for i in arrays)))
    sources: list[Source] = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            sources.append(Source(item, array_names[i]))
        elif not Path(item).is_dir():  # a named file is read whatever its name; a missing one is its error row
            sources.append(Source.file(item))
        else:
            sources += [Source.file(path) for path in find_images([Path(item)], recursive)]
    return sources
