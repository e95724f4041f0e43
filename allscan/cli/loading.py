"""What commands check and load before they work: outputs and inputs first (no TensorFlow yet), then
the manifest, then the models; each refusal is a usage error (exit 2)."""

from collections.abc import Callable, Collection
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape

from allscan.cli.app import err, usage_error
from allscan.paths import default_models_dir, store_path_for


@contextmanager
def refusing(*errors: type[Exception], message: Callable[[Exception], str] = str):
    """Turn the given library errors into a usage error (exit 2) naming the cause."""
    try:
        yield
    except errors as exc:
        raise usage_error(message(exc)) from None


def preflight(out: Path, report: Path | None = None, inputs: list[Path] = (),
              folders: list[tuple[str, Path | None]] = (), watched: Path | None = None, pdf: Path | None = None,
              recursive: bool = True):
    """Check inputs and outputs and claim the results store before anything heavy loads; the held lock.
    ``inputs``, where given, must hold an image (searching subfolders if ``recursive``)."""
    from allscan.run.preflight import (PreflightError, check_images_found, check_inputs, check_outputs,
                                       check_watched_folder, claim_store)

    with refusing(PreflightError):
        check_outputs(out, report, folders, pdf)
        check_inputs(inputs)
        if inputs:
            check_images_found(inputs, recursive)
        if watched is not None:
            check_watched_folder(watched)
        lock, moved = claim_store(out)
    if moved is not None:
        err.print(escape(f"warning: the results store {store_path_for(out)} was corrupt; moved it to {moved} and"
                         " started a fresh one (its images are scored again)"), highlight=False)
    return lock


def specimens(inputs: list[Path], pattern: str | None, map_file: Path | None):
    """How images are assigned to specimens; a bad pattern or map (its first offending line) is refused."""
    from allscan.run.specimens import Specimens, SpecimenError, read_map

    if pattern is not None and map_file is not None:
        raise usage_error("give --specimen-pattern or --specimens, not both")
    with refusing(SpecimenError):
        return Specimens(inputs, pattern, read_map(map_file) if map_file is not None else None)


def pdf_report(pdf: Path | None, paper: str):
    from allscan.results.pdf import PdfReport

    with refusing(ValueError):
        return PdfReport(pdf, paper.lower()) if pdf is not None else None


def check_heatmap_flags(folder: Path | None, every: bool) -> None:
    if every and folder is None:
        raise usage_error("--heatmaps-all needs --heatmaps DIR")


def check_cell_flags(cells: bool, geojson: Path | None) -> None:
    if geojson is not None and not cells:
        raise usage_error("--cells-geojson needs the cells: drop --no-cells")


def check_companion_flags(ctx: typer.Context, pdf: Path | None, engine: str) -> None:
    """Refuse an option given without the one it acts with, as ``--heatmaps-all`` is without ``--heatmaps``: it
    would be ignored without a word (no PDF on letter paper, a run on this machine instead of the cluster)."""
    if pdf is None and given(ctx, "paper"):
        raise usage_error("--paper needs --pdf FILE")
    if engine != "ray":
        for name in ("address", "actors", "actor_cpus"):
            if given(ctx, name):
                raise usage_error(f"--{name.replace('_', '-')} needs --engine ray")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line gave the option ``name`` (rather than its default)."""
    return ctx.get_parameter_source(name).name != "DEFAULT"


def given_domain_options(ctx: typer.Context) -> list[str]:
    """The domain options (``stain_norm``, ``rbc_diameter``) the command line gave: a site profile's own stand in
    for the others."""
    from allscan.domain.fields import DomainOptions

    return [name for name in DomainOptions().key() if given(ctx, name)]


def heatmap_options(folder: Path | None, every: bool):
    from allscan.scoring.heatmaps import HeatmapOptions

    return HeatmapOptions(folder, every) if folder else None


def require_train_extra(shipping: bool = False) -> None:
    """Training, tuning and evaluation need matplotlib, and shipping (which converts and quantises the models)
    NNCF: the ``train`` extra, which the runtime install leaves out."""
    import importlib.util

    wanted = ("sklearn", "matplotlib", "nncf") if shipping else ("sklearn", "matplotlib")
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise usage_error(f"this command needs {' and '.join(missing)}: pip install 'allscan[train]'")


def require_splits(data_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    for sub in splits:
        if not (data_dir / sub).is_dir():
            raise usage_error(f"{data_dir / sub} not found: DATA_DIR must hold {' and '.join(s + '/' for s in splits)}")


def manifest(models: Path | None):
    """The models folder's manifest, refused in a second, before TensorFlow loads, if missing or malformed."""
    from allscan.models.manifest import ManifestError, load_manifest

    with refusing(ManifestError):
        return load_manifest(models or default_models_dir())


def ensemble(models: Path | None):
    manifest(models)
    from allscan.models.ensemble import Ensemble
    from allscan.models.manifest import ManifestError

    with refusing(ManifestError):
        return Ensemble.load(models or default_models_dir())


def check_runtime(runtime: str) -> None:
    """Refuse a ``--runtime`` that is not one of auto, openvino and keras."""
    from allscan.models.manifest import RUNTIMES

    if runtime not in RUNTIMES:
        raise usage_error(f"--runtime must be one of {', '.join(RUNTIMES)}")


def pipeline(models: Path | None, site: Path | None = None, stain_norm: bool = True,
             rbc_diameter: float | None = None, load_models: bool = True, site_origin: str = "", runtime: str = "auto",
             cells: bool = True, need_cells: bool = False, given: Collection[str] = ()):
    """The scoring pipeline: the site profile (checked first), models (checked, and loaded unless
    ``load_models`` is False, by ``runtime``) and domain options (``cells``: find and judge the white cells);
    ``site_origin`` names where ``site`` came from. With ``need_cells``, models without a cell classifier
    are refused before they load. With a site profile, the domain options not named in ``given``
    (:func:`given_domain_options`) and an ``auto`` runtime are the profile's; others that differ from its
    are refused before the models load."""
    manifest(models)
    from allscan.domain.fields import DomainOptions
    from allscan.models.manifest import ManifestError
    from allscan.scoring.cells import CELLS_DIR
    from allscan.scoring.pipeline import Pipeline

    folder = models or default_models_dir()
    if need_cells and not (Path(folder) / CELLS_DIR).is_dir():
        raise usage_error(f"--cells-geojson: the models in {folder} come without a cell classifier ({CELLS_DIR}/)")
    check_runtime(runtime)
    with refusing(ManifestError):
        return Pipeline.load(folder, site, DomainOptions(stain_norm, rbc_diameter, cells),
                             load_models, site_origin, runtime, given=given)


def site_origin(ctx: typer.Context) -> str:
    """``$ALLSCAN_SITE`` when the command took ``--site`` from that variable, so that messages name it."""
    return "$ALLSCAN_SITE" if ctx.get_parameter_source("site").name == "ENVIRONMENT" else ""


def label_box(text: str | None, default):
    """A ``--blank-box`` value, or ``default`` when not given."""
    from allscan.training.dataset import parse_box

    if text is None:
        return default
    with refusing(ValueError):
        return parse_box(text)
