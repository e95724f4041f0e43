"""``allscan adapt``: fit a site profile on a lab's own labelled images, its labelled cell crops, or both."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from allscan.cli import loading, options as o
from allscan.cli.app import app, console, err, terminate_as_interrupt, usage_error
from allscan.cli.display import print_adapted, print_cell_heads
from allscan.paths import default_models_dir, path_text

Labelled = Annotated[Path | None, typer.Argument(
    help="Folder with ALL/ and normal/ sub-folders of your lab's labelled images (at least 5 each): fits the "
         "profile's field part.", show_default=False)]
CellCropsDir = Annotated[Path | None, typer.Option(
    "--cells", help="Folder with blast/ and normal/ sub-folders of your lab's cell crops (one cell centred, any "
                    "size; at least 10 each): fits the profile's cell part.",
    rich_help_panel=o.INPUT, show_default=False)]


@app.command()
def adapt(labelled: Labelled = None, *, cells: CellCropsDir = None, out: o.ProfileOut, models: o.Models = None,
          runtime: o.Runtime = "auto", stain_norm: o.StainNorm = True, rbc_diameter: o.RbcDiameter = None) -> None:
    """Fit a site profile on your lab's labelled images (light heads on the models' features, the site's
    threshold, review band and domain), on its labelled cell crops (--cells: heads on the cell classifier's
    features and the site's cell threshold), or on both. Prints cross-validated figures with 95% intervals.
    The profile records the runtime and domain options: --site scores with them."""
    if labelled is None and cells is None:
        raise usage_error("give LABELLED (a folder of labelled images), --cells CELLS_DIR (labelled cell crops) "
                          "or both")
    loading.check_runtime(runtime)
    from allscan.run.preflight import leaving_no_trace

    with terminate_as_interrupt(), leaving_no_trace([out]):
        _adapt(labelled, cells, out, models, runtime, stain_norm, rbc_diameter)


def _adapt(labelled: Path | None, cells: Path | None, out: Path, models: Path | None, runtime: str,
           stain_norm: bool, rbc_diameter: float | None) -> None:
    from allscan.domain.site import CELLS, FIELDS, PART_WORDS
    from allscan.models.manifest import ManifestError
    from allscan.training.adapt import LabelledSetError, adapt as fit_fields, kept_parts, list_labelled, site_profile
    from allscan.training.adapt_cells import adapt_cells, list_crops, read_crops

    with loading.refusing(LabelledSetError):
        images = list_labelled(_folder(labelled)) if labelled is not None else None
        listed_crops = list_crops(_folder(cells)) if cells is not None else None
    check_profile_out(out)
    models_dir = models or default_models_dir()
    if images is not None:
        loading.manifest(models)
    if listed_crops is not None:
        check_cell_models(models_dir)
    refitted = [name for name, given in ((FIELDS, labelled), (CELLS, cells)) if given is not None]
    kept, dropped = kept_parts(out, refitted, part_digests(models_dir))
    for line in dropped:
        err.print(f"[yellow]warning:[/] {escape(line)}")
    crops = None
    if listed_crops is not None:
        with loading.refusing(LabelledSetError):
            crops = read_crops(listed_crops)
    field_result = cell_result = classifier = None
    if images is not None:
        pipeline = loading.pipeline(models, None, stain_norm, rbc_diameter, runtime=runtime)
        with loading.refusing(ManifestError, LabelledSetError):
            field_result = fit_fields(pipeline, images)
        classifier = pipeline.cells
    if crops is not None:
        cell_result = adapt_cells(classifier or cell_classifier(models_dir, runtime), crops)
    site_profile(field_result, cell_result, kept).save(out)
    if field_result is not None:
        print_adapted(out, field_result)
    if cell_result is not None:
        print_cell_heads(out, cell_result)
    for name, result in ((FIELDS, field_result), (CELLS, cell_result)):
        if result is not None:
            console.print(escape(f"site profile {path_text(out)}: {_fitted_line(name, result.part)}"), soft_wrap=True)
    for name, part in kept.items():
        console.print(escape(f"site profile {path_text(out)}: kept its {PART_WORDS[name]} part, fitted on "
                             f"{path_text(part.meta.get('source', 'images not recorded'))}"), soft_wrap=True)


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise usage_error(f"no such folder: {path}")
    return path


def check_profile_out(out: Path) -> None:
    """Refuse, before the models load, a profile folder whose files could not be written at the end."""
    from allscan.domain.site import PROFILE_JSON, PROFILE_NPZ
    from allscan.run.preflight import PreflightError, check_writable_file

    with loading.refusing(PreflightError):
        if out.exists() and not out.is_dir():
            raise PreflightError(f"site profile folder {out} is a file; --out takes a folder")
        for name in (PROFILE_JSON, PROFILE_NPZ):
            check_writable_file(out / name, "site profile file")


def part_digests(models_dir: Path) -> dict[str, str | None]:
    """The digest of the models each part of a profile is fitted on (None where there are none, or they are
    malformed), by part name: a part already in the profile folder is kept only for these."""
    from allscan.domain.site import CELLS, FIELDS
    from allscan.models.manifest import ManifestError, load_manifest
    from allscan.scoring.cells import CELLS_DIR

    digests: dict[str, str | None] = {}
    for name, folder in ((FIELDS, models_dir), (CELLS, models_dir / CELLS_DIR)):
        try:
            digests[name] = load_manifest(folder).digest
        except ManifestError:
            digests[name] = None
    return digests


def check_cell_models(models_dir: Path) -> None:
    """Refuse, before TensorFlow loads, models without a cell classifier or with a malformed one."""
    from allscan.models.manifest import ManifestError, load_manifest
    from allscan.scoring.cells import CELLS_DIR

    if not (models_dir / CELLS_DIR).is_dir():
        raise usage_error(f"the models in {models_dir} come without a cell classifier ({CELLS_DIR}/); "
                          "adapt --cells fits on its features")
    with loading.refusing(ManifestError):
        load_manifest(models_dir / CELLS_DIR)


def cell_classifier(models_dir: Path, runtime: str = "auto"):
    """The cell classifier of ``models_dir`` (checked by :func:`check_cell_models`), loaded in ``runtime``."""
    from allscan.models.manifest import ManifestError
    from allscan.scoring.cells import CellClassifier

    with loading.refusing(ManifestError):
        return CellClassifier.load(models_dir, runtime)


def _fitted_line(name: str, part) -> str:
    """The runtime (and, for the field part, the domain options) the part ``name`` was fitted with, which
    ``--site`` scores with."""
    from allscan.domain.site import OPTIONS, PART_WORDS, RUNTIME, spelt

    settings = [spelt(RUNTIME, part.runtime), *(spelt(k, v) for k, v in part.meta.get(OPTIONS, {}).items())]
    return f"its {PART_WORDS[name]} part was fitted with {', '.join(settings)}; --site scores with these"

