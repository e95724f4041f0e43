"""The ``allscan`` command line: option parsing only; the work happens in the library."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from allscan import __version__
from allscan.paths import default_models_dir

app = typer.Typer(
    help="Screen peripheral blood smear images for Acute Lymphoblastic Leukemia (research use only).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

INPUT, MODEL, OUTPUT, RUN, TRAIN = "Input", "Models", "Output", "Run", "Training"

ModelsOpt = Annotated[
    Path | None,
    typer.Option("--models", help="Models folder with a manifest.json [default: the shipped models/]",
                 rich_help_panel=MODEL, show_default=False),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"allscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """allscan: an ensemble of four CNNs that flags blood smear fields with ALL."""


def _usage_error(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(EXIT_USAGE)


def _load_ensemble(models: Path | None):
    from allscan.ensemble import Ensemble
    from allscan.manifest import ManifestError

    try:
        return Ensemble.load(models or default_models_dir())
    except ManifestError as exc:
        raise _usage_error(str(exc)) from None


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders to score.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results file: .csv or .xlsx (the suffix picks the format).",
                                      rich_help_panel=OUTPUT)] = Path("results.xlsx"),
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Scan sub-folders.",
                                            rich_help_panel=INPUT)] = True,
    models: ModelsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.",
                                            rich_help_panel=RUN)] = 16,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Threads reading and decoding images.",
                                         rich_help_panel=RUN)] = 2,
    rescore: Annotated[bool, typer.Option("--rescore", help="Score again images already in the results store.",
                                          rich_help_panel=RUN)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display or summary (for scripts).",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Score images with the ensemble and write one row per image to CSV or Excel.

    Exit code: 0 every image scored, 1 some images failed (their rows say why), 2 usage error.
    """
    from allscan.predict import predict as run_predict
    from allscan.progress import LiveProgress, summary_table
    from allscan.writers import check_output_suffix

    try:
        check_output_suffix(out)
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"no such file or folder: {missing[0]}")
    except (ValueError, FileNotFoundError) as exc:
        raise _usage_error(str(exc)) from None
    ensemble = _load_ensemble(models)
    with LiveProgress(console, quiet) as live:
        summary = run_predict(paths, out, ensemble, recursive, batch_size, workers, rescore, observer=live)
    if not quiet:
        console.print(summary_table(summary))
        console.print(f"results: [bold]{summary.out}[/]  (store: {summary.store})")
        if summary.counts.skipped:
            console.print(f"{summary.counts.skipped} images were already scored with these models and were skipped"
                          " (--rescore to score them again)")
        if summary.interrupted:
            err.print("[yellow]interrupted: results so far were written; rerun the same command to finish[/]")
    raise typer.Exit(summary.exit_code)


@app.command("models")
def list_models(models: ModelsOpt = None) -> None:
    """List the models in the models folder with their checksums and validation figures."""
    from allscan.manifest import ManifestError, load_manifest
    from allscan.registry import REGISTRY

    folder = models or default_models_dir()
    try:
        manifest = load_manifest(folder)
    except ManifestError as exc:
        raise _usage_error(str(exc)) from None
    table = Table(title=f"models in {folder}")
    for column in ("name", "architecture", "input", "weight", "val acc", "val bal. acc", "val AUC"):
        table.add_column(column, no_wrap=column == "name")
    for entry in manifest.models.values():
        v = entry.validation
        arch = entry.architecture or (REGISTRY[entry.name].architecture if entry.name in REGISTRY else "")
        table.add_row(
            entry.name, arch, f"{entry.input_size}px", f"{manifest.ensemble.weights.get(entry.name, 0):.2f}",
            *(f"{v[k]:.3f}" if k in v else "–" for k in ("accuracy", "balanced_accuracy", "roc_auc")),
        )
    console.print(table)
    for entry in manifest.models.values():
        console.print(f"{entry.name}: {entry.file}  sha256 {entry.sha256}", soft_wrap=True)
    e = manifest.ensemble
    console.print(f"threshold {e.threshold:.3f}, review band {e.review_band[0]:.3f}–{e.review_band[1]:.3f},"
                  f" blank box {manifest.blank_box or 'none'}, digest {manifest.digest}")
