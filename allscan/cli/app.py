"""The ``allscan`` command line: option parsing only; the work happens in the library.

Whatever goes wrong inside a command reaches the user as one line on stderr and an exit
code from the README's table, never a traceback (``ALLSCAN_DEBUG=1`` shows one).
"""

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from allscan import __version__
from allscan.paths import default_models_dir, store_path_for

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_IO, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
_RUN_COMMANDS = ("predict", "watch")


class _OneLineErrors(TyperGroup):
    """Runs a command; any failure it lets out becomes one line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits, Ctrl-C at a prompt, usage errors
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if os.environ.get("ALLSCAN_DEBUG", "") not in ("", "0"):
                raise
            code, message = _failure(exc, ctx.invoked_subcommand in _RUN_COMMANDS)
            _error_line(message)
            raise typer.Exit(code) from None


def _failure(exc: BaseException, run: bool) -> tuple[int, str]:
    """The exit code and the line for a failure that escaped a command."""
    from allscan.fileio import OutputError, describe

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, OutputError):
        kept = "; results already stored are kept: rerun the same command to finish" if run else ""
        return EXIT_IO, f"{exc}{kept}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_IO, f"{where}{describe(exc)}"
    if isinstance(exc, MemoryError):
        return EXIT_IO, "out of memory"
    return EXIT_INTERNAL, (f"internal error ({type(exc).__name__}: {exc}); this is a bug in allscan,"
                           " ALLSCAN_DEBUG=1 shows the traceback")


app = typer.Typer(
    cls=_OneLineErrors,
    help="Screen peripheral blood smear images for Acute Lymphoblastic Leukemia (research use only).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
if not console.is_terminal:
    console.width = max(console.width, 120)  # logs and pipes get whole tables, not 80 columns

INPUT, MODEL, OUTPUT, RUN, TRAIN, SCALE = "Input", "Models", "Output", "Run", "Training", "Scaling out (Ray)"

ModelsOpt = Annotated[
    Path | None,
    typer.Option("--models", help="Models folder with a manifest.json [default: the shipped models/]",
                 rich_help_panel=MODEL, show_default=False),
]
HeatmapsOpt = Annotated[
    Path | None,
    typer.Option("--heatmaps", help="Write Grad-CAM figures here for ALL and review images.",
                 rich_help_panel=OUTPUT, show_default=False),
]
HeatmapsAllOpt = Annotated[bool, typer.Option("--heatmaps-all", help="Heatmaps for every image.",
                                              rich_help_panel=OUTPUT)]
DOMAIN = "Other labs' images"
SiteOpt = Annotated[
    Path | None,
    typer.Option("--site", envvar="ALLSCAN_SITE", help="Score with a site profile made by allscan adapt.",
                 rich_help_panel=DOMAIN, show_default=False),
]
StainNormOpt = Annotated[
    bool,
    typer.Option("--stain-norm/--no-stain-norm", help="Normalise the colour of images stained far unlike the "
                 "training images (beyond 3× the out-of-domain colour limit; Reinhard, L*a*b*).",
                 rich_help_panel=DOMAIN),
]
RbcDiameterOpt = Annotated[
    float | None,
    typer.Option("--rbc-diameter", min=1.0, help="Red-cell diameter in pixels in your images (overrides the "
                 "estimate; a lab that knows its camera).", rich_help_panel=DOMAIN, show_default=False),
]


def _check_heatmap_flags(folder: Path | None, every: bool) -> None:
    if every and folder is None:
        raise _usage_error("--heatmaps-all needs --heatmaps DIR")


def _heatmap_options(folder: Path | None, every: bool):
    from allscan.scoring.heatmaps import HeatmapOptions

    return HeatmapOptions(folder, every) if folder else None


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


def _error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True, highlight=False)


def _usage_error(message: str) -> typer.Exit:
    _error_line(message)
    return typer.Exit(EXIT_USAGE)


def _preflight(out: Path, report: Path | None = None, inputs: list[Path] = (),
               folders: list[tuple[str, Path | None]] = (), watched: Path | None = None):
    """Check inputs and outputs and claim the results store before anything heavy loads; the held lock."""
    from allscan.run.preflight import PreflightError, check_inputs, check_outputs, check_watched_folder, claim_store

    try:
        check_outputs(out, report, folders)
        check_inputs(inputs)
        if watched is not None:
            check_watched_folder(watched)
        lock, moved = claim_store(out)
    except PreflightError as exc:
        raise _usage_error(str(exc)) from None
    if moved is not None:
        err.print(escape(f"warning: the results store {store_path_for(out)} was corrupt; moved it to {moved} and"
                         " started a fresh one (its images are scored again)"), soft_wrap=True, highlight=False)
    return lock


def _require_train_extra() -> None:
    """Training, tuning and evaluation need scikit-learn and matplotlib, which the runtime install leaves out."""
    import importlib.util

    missing = [m for m in ("sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise _usage_error(f"this command needs {' and '.join(missing)}: pip install 'allscan[train]'")


def _check_manifest(models: Path) -> None:
    """Refuse a missing or malformed manifest in a second, before TensorFlow loads."""
    from allscan.models.manifest import ManifestError, load_manifest

    try:
        load_manifest(models)
    except ManifestError as exc:
        raise _usage_error(str(exc)) from None


def _load_ensemble(models: Path | None):
    _check_manifest(models or default_models_dir())
    from allscan.models.ensemble import Ensemble
    from allscan.models.manifest import ManifestError

    try:
        return Ensemble.load(models or default_models_dir())
    except ManifestError as exc:
        raise _usage_error(str(exc)) from None


def _load_pipeline(models: Path | None, site: Path | None = None, stain_norm: bool = True,
                   rbc_diameter: float | None = None, load_models: bool = True):
    _check_manifest(models or default_models_dir())
    from allscan.domain.fields import DomainOptions
    from allscan.scoring.pipeline import DomainPipeline
    from allscan.models.manifest import ManifestError

    try:
        return DomainPipeline.load(models or default_models_dir(), site, DomainOptions(stain_norm, rbc_diameter),
                                   load_models)
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
    heatmaps: HeatmapsOpt = None,
    heatmaps_all: HeatmapsAllOpt = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML batch report.",
                                                rich_help_panel=OUTPUT, show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (pip install "
                                        "\"allscan[ray]\").", rich_help_panel=SCALE)] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster: auto or ray://HOST:PORT "
                                                "[default: start a local Ray runtime].", rich_help_panel=SCALE,
                                                show_default=False)] = None,
    actors: Annotated[int, typer.Option("--actors", min=1, help="Ray actors scoring, each holding the models.",
                                        rich_help_panel=SCALE)] = 1,
    actor_cpus: Annotated[float, typer.Option("--actor-cpus", min=0.01, help="CPUs (TensorFlow threads) each "
                                              "Ray actor takes.", rich_help_panel=SCALE)] = 1.0,
    site: SiteOpt = None,
    stain_norm: StainNormOpt = True,
    rbc_diameter: RbcDiameterOpt = None,
) -> None:
    """Score images with the ensemble and write one row per image to CSV or Excel.

    Exit code: 0 every image scored, 1 some images failed (their rows say why), 2 usage error (nothing was
    done), 3 an output or the results store could not be written (rerun to finish), 4 internal error,
    130 interrupted.
    """
    _check_heatmap_flags(heatmaps, heatmaps_all)
    with _preflight(out, report, paths, [("heatmaps folder", heatmaps)]):
        from allscan.api import Screener
        from allscan.run.engines import EngineError, make_engine
        from allscan.cli.display import LiveProgress, summary_table

        options = _heatmap_options(heatmaps, heatmaps_all)
        try:
            runner = make_engine(engine, workers, address, actors, actor_cpus)
        except EngineError as exc:
            raise _usage_error(str(exc)) from None
        screener = Screener(_load_pipeline(models, site, stain_norm, rbc_diameter,
                                           load_models=engine == "local"))  # Ray's actors load their own
        try:
            with LiveProgress(console, quiet) as live:
                summary = screener.run(paths, out, recursive=recursive, batch_size=batch_size, workers=workers,
                                       rescore=rescore, engine=runner, observer=live, heatmaps=options,
                                       report=report)
        except EngineError as exc:
            raise _usage_error(str(exc)) from None
    if not quiet:
        console.print(summary_table(summary))
        console.print(f"results: [bold]{summary.out}[/]  (store: {summary.store})")
        if report:
            console.print(f"report: [bold]{report}[/]")
        if summary.counts.skipped:
            console.print(f"{summary.counts.skipped} images were already scored with these models and were skipped"
                          " (--rescore to score them again)")
        if summary.interrupted:
            err.print("[yellow]interrupted: results so far were written; rerun the same command to finish[/]")
    raise typer.Exit(summary.exit_code)


@app.command("models")
def list_models(models: ModelsOpt = None) -> None:
    """List the models in the models folder with their checksums and validation figures."""
    from allscan.models.manifest import ManifestError, load_manifest
    from allscan.models.registry import REGISTRY

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


def _box(text: str | None, default):
    from allscan.training.dataset import parse_box

    if text is None:
        return default
    try:
        return parse_box(text)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder with train/ and val/, each holding normal/ and ALL/.",
                                             show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name, or 'all' for the four in turn.",
                                       rich_help_panel=MODEL)] = "all",
    out: Annotated[Path, typer.Option("--out", "-o", help="Models folder to ship the best epoch into.",
                                      rich_help_panel=OUTPUT)] = Path("models"),
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Checkpoints and logs [default: ~/allscan-runs].",
                                                  rich_help_panel=OUTPUT, show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [default: the model's registry entry].",
                                               rich_help_panel=TRAIN, show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.",
                                            rich_help_panel=TRAIN)] = 16,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Square input side [default: registry].",
                                                   rich_help_panel=TRAIN, show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate [default: registry].",
                                             rich_help_panel=TRAIN, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.", rich_help_panel=TRAIN)] = 1,
    weights: Annotated[Path | None, typer.Option("--weights", help="Start the backbone from this weights file "
                                                 "(e.g. ImageNet weights on disk; nothing is downloaded).",
                                                 rich_help_panel=TRAIN, show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in the run folder.",
                                         rich_help_panel=TRAIN)] = False,
    blank_box: Annotated[str | None, typer.Option(
        "--blank-box", help="x0,y0,x1,y1 (224×224 coordinates) to blank in every image, or 'none'. "
        "[default: the Aria scale-bar label box]", rich_help_panel=INPUT, show_default=False)] = None,
) -> None:
    """Train one or all four models, checkpointing every epoch, and ship the best epoch into --out."""
    _require_train_extra()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from allscan.training.dataset import ARIA_LABEL_BOX
    from allscan.paths import default_runs_dir
    from allscan.models.registry import MODEL_NAMES, get_spec
    from allscan.training.ship import ship
    from allscan.training.train import TrainConfig
    from allscan.training.train import train as run_training

    names = MODEL_NAMES if model == "all" else (model,)
    try:
        specs = [get_spec(n) for n in names]
    except KeyError as exc:
        raise _usage_error(exc.args[0]) from None
    _require_splits(data_dir)
    box = _box(blank_box, ARIA_LABEL_BOX)
    runs = runs_dir or default_runs_dir()
    for spec in specs:
        config = TrainConfig(
            epochs=epochs or spec.epochs, batch_size=batch_size, input_size=input_size or spec.input_size,
            learning_rate=lr or spec.learning_rate, seed=seed, blank_box=box, weights=weights,
        )
        console.print(f"[bold]{spec.name}[/]: {config.input_size}px, {config.epochs} epochs, batch"
                      f" {config.batch_size}, lr {config.learning_rate:g}; checkpoints in {runs / spec.name}")
        with Progress(TextColumn(f"[bold]{spec.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(spec.name, total=config.epochs)

            def on_start(done, total, task=task, progress=progress):
                progress.update(task, completed=done, total=total)

            def report(e, task=task, progress=progress):
                progress.update(task, completed=e.epoch)
                progress.console.print(
                    f"epoch {e.epoch:>3}  loss {e.loss:.4f}  val_loss {e.val_loss:.4f}  val_acc {e.val_accuracy:.4f}"
                    f"  val_auc {e.val_auc:.4f}  ({e.seconds:.0f}s)"
                )

            result = run_training(spec, data_dir, runs / spec.name, config, resume, report, on_start)
        _print_shipped(ship(spec, result, config, data_dir, out), result, out)


def _require_splits(data_dir: Path) -> None:
    for sub in ("train", "val"):
        if not (data_dir / sub).is_dir():
            raise _usage_error(f"{data_dir / sub} not found: DATA_DIR must hold train/ and val/")


def _print_shipped(entry, result, out: Path) -> None:
    v = entry.validation
    console.print(f"[green]shipped[/] {out / entry.file}: best epoch {result.best_epoch} of {result.epochs_run} run,"
                  f" val accuracy {v['accuracy']:.4f}, balanced {v['balanced_accuracy']:.4f}, AUC {v['roc_auc']:.4f}")


@app.command("ship")
def ship_run(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of `allscan train` (e.g. ~/allscan-runs/vgg16).",
                                            show_default=False)],
    data_dir: Annotated[Path, typer.Argument(help="The data folder the run trained on (train/ and val/).",
                                             show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Models folder to ship the best epoch into.",
                                      rich_help_panel=OUTPUT)] = Path("models"),
) -> None:
    """Ship the best epoch so far of a training run, finished or cut, with the same refits as `train`."""
    _require_train_extra()
    from allscan.models.registry import get_spec
    from allscan.training.ship import ship
    from allscan.training.train import load_run

    try:
        result, config = load_run(run_dir)
    except FileNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    try:
        spec = get_spec(result.name)
    except KeyError as exc:
        raise _usage_error(exc.args[0]) from None
    _require_splits(data_dir)
    _print_shipped(ship(spec, result, config, data_dir, out), result, out)


@app.command()
def tune(
    data_dir: Annotated[Path, typer.Argument(help="Folder holding val/ with normal/ and ALL/.", show_default=False)],
    models: ModelsOpt = None,
    pool_train: Annotated[bool, typer.Option(
        "--pool-train", help="Also fit the calibration on train/ predictions and check the threshold's recall bound "
        "on train/ and val/ together (only for models that do not fit train/ better than val/).")] = False,
) -> None:
    """Refit the calibration, weights, screening threshold and review band on the validation split."""
    _require_train_extra()
    from allscan.training.ship import refit

    ensemble = _load_ensemble(models)
    for sub in ("val", "train") if pool_train else ("val",):
        if not (data_dir / sub).is_dir():
            raise _usage_error(f"{data_dir / sub} not found")
    tuning = refit(ensemble, data_dir, pool_train)
    config, point = tuning.config, tuning.operating_point
    console.print(f"weights {config.weights}; threshold {config.threshold:.4f} (recall {point.recall:.4f},"
                  f" lower 95% bound {point.recall_lower:.4f}{'' if point.target_met else ', below the target'});"
                  f" review band {config.review_band[0]:.3f}–{config.review_band[1]:.3f}"
                  f" ({100 * tuning.flagged:.1f}% of val)")


def _figure(d: dict, key: str) -> str:
    interval = d["intervals"].get(key)
    return f"{d[key]:.4f}" + (f"\n{interval[0]:.3f}-{interval[1]:.3f}" if interval else "")


def _metrics_table(title: str, rows: dict, review_rows: tuple[str, ...] = ("ensemble",)) -> Table:
    table = Table(title=f"{title}; 95% intervals: Wilson for proportions, bootstrap over images otherwise")
    headers = {"n": "n", "accuracy": "acc", "precision": "prec", "recall": "recall", "specificity": "spec",
               "f1": "F1", "balanced_accuracy": "bal acc", "roc_auc": "AUC", "brier": "Brier", "ece": "ECE"}
    table.add_column("model")
    for header in headers.values():
        table.add_column(header, justify="right")
    table.add_column("tn/fp/fn/tp", justify="right")
    table.add_column("review", justify="right")
    for name, m in rows.items():
        d = m.to_dict()
        (tn, fp), (fn, tp) = d["confusion_matrix"]
        table.add_row(name, str(d["n"]), *(_figure(d, c) for c in list(headers)[1:]), f"{tn}/{fp}/{fn}/{tp}",
                      str(d["review"]) if name in review_rows else "")
    return table


@app.command()
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder holding the split folder (normal/ and ALL/ inside).",
                                             show_default=False)],
    split: Annotated[str, typer.Option(help="Split folder to evaluate.", rich_help_panel=INPUT)] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the figures as JSON.",
                                             rich_help_panel=OUTPUT, show_default=False)] = None,
    models: ModelsOpt = None,
    box: Annotated[str, typer.Option(help="Label box: 'blank' (as in training), 'raw' (left in) or 'swap' "
                                     "(pasted from an image of the other class).", rich_help_panel=INPUT)] = "blank",
    blank_box: Annotated[str | None, typer.Option("--blank-box", help="x0,y0,x1,y1 or 'none' [default: manifest].",
                                                  rich_help_panel=INPUT, show_default=False)] = None,
    shortcut_check: Annotated[bool, typer.Option(
        "--shortcut-check", help="Also score raw and box-swapped images and count verdict flips.",
        rich_help_panel=RUN)] = False,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write ROC, precision-recall, reliability and "
                                               "confusion-matrix figures (PNG) here.",
                                               rich_help_panel=OUTPUT, show_default=False)] = None,
) -> None:
    """Accuracy, precision, recall, specificity, F1, balanced accuracy, ROC AUC, Brier score and expected
    calibration error per model and for the ensemble, each with its 95% interval."""
    _require_train_extra()
    import json

    from allscan.training.evaluate import BOX_MODES, count_flips
    from allscan.training.evaluate import evaluate as run_evaluation
    from allscan.fileio import atomic_write_text

    if box not in BOX_MODES:
        raise _usage_error(f"--box must be one of {', '.join(BOX_MODES)}")
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise _usage_error(f"{split_dir} not found")
    ensemble = _load_ensemble(models)
    label_box = _box(blank_box, ensemble.manifest.blank_box)
    result = run_evaluation(ensemble, split_dir, label_box, box)
    console.print(_metrics_table(f"{split} split, label box {box}", {**result.models, "ensemble": result.ensemble}))
    payload = result.to_dict() | {"split": split, "box": box, "models_digest": ensemble.manifest.digest}
    if plots is not None:
        from allscan.training.plots import write_plots

        pred = result.predictions
        write_plots(plots, pred.labels, {**pred.per_model, "ensemble": pred.ensemble},
                    {**result.models, "ensemble": result.ensemble})
        console.print(f"plots written to {plots}")
    if shortcut_check:
        if label_box is None:
            raise _usage_error("--shortcut-check needs a label box (--blank-box or the manifest's)")
        from dataclasses import asdict

        from allscan.training.evaluate import heatmap_box_check, load_labelled

        raw = run_evaluation(ensemble, split_dir, label_box, "raw")
        swapped = run_evaluation(ensemble, split_dir, label_box, "swap")
        flips = count_flips(raw.predictions, swapped.predictions)
        n = raw.ensemble.n
        payload["shortcut_check"] = {
            "raw": raw.to_dict()["ensemble"],
            "swap": swapped.to_dict()["ensemble"],
            "flips_raw_to_swap": flips,
            "flips_blank_to_raw": count_flips(result.predictions, raw.predictions),
            "flip_share": flips / n if n else 0.0,
        }
        _, raw_images, _ = load_labelled(split_dir, label_box, "raw")
        check = heatmap_box_check(ensemble, raw_images, raw.predictions, label_box)
        payload["shortcut_check"]["heatmap_in_label_box"] = asdict(check)
        console.print(_metrics_table("ensemble with the label box raw / swapped",
                                     {"raw": raw.ensemble, "swapped": swapped.ensemble}, ("raw", "swapped")))
        console.print(f"verdicts flipped by swapping label boxes between classes: {flips} of {n}"
                      f" ({100 * flips / max(n, 1):.2f}%)")
        console.print(f"raw ALL verdicts whose hottest 5% of Grad-CAM lies mostly in the label box: {check.in_box}"
                      f" of {check.images}; mean share in the box {check.mean_fraction:.3f} (box is"
                      f" {check.box_area_fraction:.3f} of the image)")
    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
        console.print(f"figures written to {out}")


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Incoming folder to watch (created if missing).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results file: .csv (appended row by row) or .xlsx "
                                      "(rewritten every --xlsx-every seconds and at stop).",
                                      rich_help_panel=OUTPUT)] = Path("results.csv"),
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Watch sub-folders.",
                                            rich_help_panel=INPUT)] = True,
    poll: Annotated[bool, typer.Option("--poll", help="Poll instead of filesystem events (network shares).",
                                       rich_help_panel=INPUT)] = False,
    settle: Annotated[float, typer.Option(help="Seconds a file must stay unchanged before it is scored.",
                                          rich_help_panel=INPUT)] = 1.0,
    max_delay: Annotated[float, typer.Option("--max-delay", help="Longest an image waits for a batch to fill (s).",
                                             rich_help_panel=RUN)] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Largest batch.", rich_help_panel=RUN)] = 16,
    xlsx_every: Annotated[float, typer.Option("--xlsx-every", help="Seconds between .xlsx rewrites.",
                                              rich_help_panel=OUTPUT)] = 30.0,
    move_to: Annotated[Path | None, typer.Option("--move-to", help="Move each image, once its row is stored, to "
                                                 "DIR/ALL, DIR/normal, DIR/review or DIR/error.",
                                                 rich_help_panel=OUTPUT, show_default=False)] = None,
    models: ModelsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One log line per image instead of the live view.",
                                        rich_help_panel=OUTPUT)] = False,
    heatmaps: HeatmapsOpt = None,
    heatmaps_all: HeatmapsAllOpt = False,
    report: Annotated[Path | None, typer.Option("--report", help="HTML batch report, rewritten with the outputs.",
                                                rich_help_panel=OUTPUT, show_default=False)] = None,
    site: SiteOpt = None,
    stain_norm: StainNormOpt = True,
    rbc_diameter: RbcDiameterOpt = None,
) -> None:
    """Score images as they land in FOLDER, each exactly once, until Ctrl-C or SIGTERM."""
    import signal
    import threading

    _check_heatmap_flags(heatmaps, heatmaps_all)
    writable = [("heatmaps folder", heatmaps), ("--move-to folder", move_to)]
    if move_to is not None:
        writable.append(("watched folder (images are moved out of it)", folder))
    with _preflight(out, report, folders=writable, watched=folder):
        from allscan.cli.display import WatchDisplay
        from allscan.run.watch import WatchConfig, Watcher

        options = _heatmap_options(heatmaps, heatmaps_all)
        pipeline = _load_pipeline(models, site, stain_norm, rbc_diameter)
        config = WatchConfig(folder, out, recursive, poll, settle, max_delay, batch_size, xlsx_every, move_to,
                             heatmaps=options, report=report)
        members = [m.name for m in pipeline.ensemble.members]
        site_note = f", site profile {site}" if site else ""

        def ready(catch_up: int) -> None:
            console.print(escape(f"ready: watching {folder} → {out} with {len(members)} models ({', '.join(members)}"
                                 f"{site_note});"
                                 f" {catch_up} images to catch up; Ctrl-C to stop"), soft_wrap=True, highlight=False)

        watcher = Watcher(config, pipeline, on_ready=ready)
        display = WatchDisplay(console, watcher.stats, quiet)
        watcher.observer = display
        signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
        failure: list[BaseException] = []

        def run() -> None:
            try:
                watcher.run()
            except BaseException as exc:  # reported on the main thread below
                failure.append(exc)

        with display:
            runner = threading.Thread(target=run, name="allscan-watch")
            runner.start()
            try:
                while runner.is_alive():
                    runner.join(0.25)
                    display.refresh()
            except KeyboardInterrupt:
                watcher.stop()
                runner.join()
        if failure:
            raise failure[0]
    if not quiet:
        console.print(f"stopped; {watcher.stats.scored} images scored this session; results in {out}")


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="One image file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Heatmap figure [default: IMAGE-heatmap.png].",
                                             rich_help_panel=OUTPUT, show_default=False)] = None,
    models: ModelsOpt = None,
    site: SiteOpt = None,
    stain_norm: StainNormOpt = True,
    rbc_diameter: RbcDiameterOpt = None,
) -> None:
    """Print each model's and the ensemble's probability for one image and write its Grad-CAM figure."""
    from allscan.run.preflight import PreflightError, check_writable_file

    if not image.is_file():
        raise _usage_error(f"no such file: {image}")
    target = out or image.with_name(f"{image.stem}-heatmap.png")
    try:
        check_writable_file(target, "heatmap figure")
    except PreflightError as exc:
        raise _usage_error(str(exc)) from None
    from allscan.scoring.heatmaps import display_copy, write_heatmaps
    from allscan.domain.fields import in_original_pixels
    from allscan.images import DECODE_MAX_SIDE, ImageError, decode_file

    pipeline = _load_pipeline(models, site, stain_norm, rbc_diameter)
    try:
        decoded = decode_file(image, max_side=DECODE_MAX_SIDE)
    except ImageError as exc:
        _error_line(f"{image}: {exc}")
        raise typer.Exit(EXIT_SOME_FAILED) from None
    fields = in_original_pixels(pipeline.fields(decoded.rgb), decoded.reduction)
    score = pipeline.score([fields])[0]
    table = Table(title=str(image))
    table.add_column("model")
    table.add_column("p(ALL)", justify="right")
    for name, p in score.per_model.items():
        table.add_row(name, f"{p:.4f}")
    table.add_row("[bold]ensemble[/]" + (" (site profile)" if site else ""), f"[bold]{score.p_all:.4f}[/]")
    console.print(table)
    console.print(f"verdict [bold]{score.verdict}[/]; agreement {score.agreement}/{len(score.per_model)}"
                  + ("; [yellow]flagged for review[/]" if score.review else ""))
    info = score.domain
    scale = "whole image (no scale estimate)" if info.scale is None else f"rescaled ×{info.scale:.3f}"
    console.print(f"{scale}; {info.tiles} field(s) scored; domain [bold]{info.domain or '-'}[/]"
                  + (f" (score {info.domain_score:.2f})" if info.domain_score is not None else ""))
    if info.notes:
        console.print(f"notes: {info.notes}")
    written = write_heatmaps(pipeline, [fields], [display_copy(decoded.rgb)], [image], [decoded.sha256], [score],
                             target.parent)
    Path(written[0]).replace(target)
    console.print(f"heatmap: {target}")


@app.command()
def adapt(
    labelled: Annotated[Path, typer.Argument(help="Folder with ALL/ and normal/ sub-folders of your lab's "
                                             "labelled images (at least 5 each).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Site profile folder to write.", rich_help_panel=OUTPUT)],
    models: ModelsOpt = None,
    stain_norm: StainNormOpt = True,
    rbc_diameter: RbcDiameterOpt = None,
) -> None:
    """Fit a site profile on your lab's labelled images: light heads on the models' features, the site's
    threshold and review band, and its domain. Prints cross-validated figures with 95% intervals."""
    from allscan.training.adapt import adapt as run_adapt
    from allscan.models.manifest import ManifestError

    if not labelled.is_dir():
        raise _usage_error(f"no such folder: {labelled}")
    pipeline = _load_pipeline(models, None, stain_norm, rbc_diameter)
    try:
        result = run_adapt(pipeline, labelled)
    except (ManifestError, FileNotFoundError) as exc:
        raise _usage_error(str(exc)) from None
    result.profile.save(out)
    for path, reason in result.skipped:
        err.print(f"[yellow]left out[/] {path}: {reason}")
    f = result.figures
    table = Table(title=f"site profile {out}: cross-validated on {f['n_ALL']} ALL + {f['n_normal']} normal images")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for name in ("roc_auc", "sensitivity", "specificity"):
        low, high = f[f"{name}_95ci"]
        table.add_row(name.replace("_", " "), f"{f[name]:.3f}", f"{low:.3f} – {high:.3f}")
    console.print(table)
    console.print(f"threshold {f['threshold']:.2f}; {f['method']}; {result.seconds:.0f} s")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")


@app.command("fit-domain")
def fit_domain(
    data_dir: Annotated[Path, typer.Argument(help="Dataset with train/ and val/ (each normal/ and ALL/).",
                                             show_default=False)],
    models: ModelsOpt = None,
) -> None:
    """Refit the domain reference (red-cell size, stain reference, out-of-domain guard) for the models
    on the training split, thresholds on val; the training command's shipping step runs it too."""
    from allscan.training.fit_domain import refit_domain
    from allscan.models.manifest import ManifestError

    try:
        reference = refit_domain(models or default_models_dir(), data_dir)
    except (ManifestError, FileNotFoundError) as exc:
        raise _usage_error(str(exc)) from None
    console.print(f"domain reference: red cells {reference.checks.rbc_diameter:.1f} px; "
                  f"{reference.fitted_on}")
