"""Model commands: list the shipped ``models``; ``train``, ``train-cells``, ``ship``, ``tune``, ``evaluate``
and ``fit-domain`` (the ``train`` extra)."""

import json
import math
from dataclasses import replace
from pathlib import Path

import typer

from allscan.cli import loading, options as o
from allscan.cli.app import app, console, usage_error, warning_line
from allscan.cli.display import (
    TrainingProgress,
    cell_models_table,
    models_table,
    print_cells_shipped,
    print_evaluation,
    print_shipped,
    print_shortcut_check,
)
from allscan.paths import default_models_dir


@app.command("models")
def list_models(models: o.Models = None) -> None:
    """List the models in the models folder, and its cell classifier, with their checksums and validation figures,
    then verify every file against its checksum (exit 2 naming the first that is missing or does not match)."""
    from allscan.models.files import check_listed_files
    from allscan.models.manifest import ManifestError, load_manifest
    from allscan.models.registry import REGISTRY
    from allscan.scoring.cells import CELLS_DIR

    folder = models or default_models_dir()
    manifest = loading.manifest(models)
    models_table(folder, manifest, REGISTRY)
    folders = [(folder, manifest)]
    if (folder / CELLS_DIR).is_dir():
        with loading.refusing(ManifestError):
            folders.append((folder / CELLS_DIR, load_manifest(folder / CELLS_DIR)))
        cell_models_table(*folders[-1])
    with loading.refusing(ManifestError):
        checked = sum(check_listed_files(where, listed) for where, listed in folders)
    console.print(f"all {checked} files listed match their sha256")


@app.command()
def train(ctx: typer.Context, data_dir: o.TrainData, model: o.ModelName = "all", out: o.ShipInto = Path("models"),
          runs_dir: o.RunsDir = None, epochs: o.Epochs = None, batch_size: o.StepBatch = 16,
          input_size: o.InputSize = None, lr: o.LearningRate = None, seed: o.Seed = 1, weights: o.Weights = None,
          resume: o.Resume = False, restart: o.Restart = False, blank_box: o.TrainBlankBox = None) -> None:
    """Train one or all four models, checkpointing every epoch, and ship the best epoch into --out.

    A run folder that holds a run is continued (--resume, with the run's own settings) or started again
    (--restart), never replaced unasked: its checkpoints may be hours of training not yet shipped.
    """
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import MODEL_NAMES, get_spec
    from allscan.paths import default_runs_dir
    from allscan.training.dataset import ARIA_LABEL_BOX, DatasetError

    with loading.refusing(KeyError, message=lambda exc: exc.args[0]):
        specs = [get_spec(n) for n in (MODEL_NAMES if model == "all" else (model,))]
    found = _check_shipping(data_dir, out)
    if lr is not None and not (math.isfinite(lr) and lr > 0):  # nan passes a "<= 0" check, then trains to nan
        raise usage_error(f"--lr must be above 0, got {lr:g}")
    if resume and restart:
        raise usage_error("give --resume or --restart, not both")
    _check_weights(weights, model)
    box = loading.label_box(blank_box, ARIA_LABEL_BOX)
    runs = runs_dir or default_runs_dir()
    if not resume and not restart:
        _refuse_replacing([runs / spec.name for spec in specs])
    from allscan.training.ship import ship
    from allscan.training.train import RunSettingsError, WeightsError, train as train_model

    settings = {"batch_size": batch_size, "seed": seed, "blank_box": box, "weights": weights}
    given = _given_settings(ctx, box)
    configs = {spec.name: _run_config(spec, runs / spec.name, resume, settings, given) for spec in specs}
    for config in configs.values():  # every run checked before the first trains
        if config.batch_size > found:
            raise usage_error(f"--batch-size {config.batch_size} is larger than the training set ({found} images in"
                              f" {data_dir / 'train'})")
    for spec in specs:
        config = configs[spec.name]
        console.print(f"[bold]{spec.name}[/]: {config.input_size}px, {config.epochs} epochs, batch"
                      f" {config.batch_size}, lr {config.learning_rate:g}; checkpoints in {runs / spec.name}")
        with (TrainingProgress(spec.name, config.epochs) as progress,
              loading.refusing(DatasetError, RunSettingsError, WeightsError)):
            result = train_model(spec, data_dir, runs / spec.name, config, resume, progress.epoch, progress.started)
        print_shipped(ship(spec, result, config, data_dir, out), result, out)


def _check_shipping(data_dir: Path, out: Path) -> int:
    """What the commands that train or ship into ``out`` check before anything loads: ``data_dir``'s train/ and
    val/ splits and their class folders, ``out`` (:func:`_check_ship_into`), then warnings of what the splits leave
    out or share; the training images found."""
    loading.require_splits(data_dir)
    found = _check_classes(data_dir, ("train", "val"))
    _check_ship_into(out)
    _warn_split(data_dir, "train")
    _warn_split(data_dir, "val", ("train",))
    return found


def _check_classes(data_dir: Path, splits: tuple[str, ...]) -> int:
    """Images in both normal/ and ALL/ of each split, checked before anything loads; the training images found."""
    from allscan.training.dataset import DatasetError, check_classes, list_split

    with loading.refusing(DatasetError):
        for split in splits:
            check_classes(data_dir / split)
        return len(list_split(data_dir / "train")[0]) if "train" in splits else 0


SPLITS = ("train", "val", "test")


def _warn_split(data_dir: Path, split: str, others: tuple[str, ...] = ()) -> None:
    """Warn, before anything loads, of images of ``split`` left out (outside its class folders, or in formats
    not read), and of those in both its class folders, or also in one of the ``others`` splits, by content (a
    copy made while sorting a lab's images): each is counted as both classes, or is no held-out image, and
    nothing else would say so."""
    from allscan.training.dataset import DatasetError, found_folders, left_out, list_split, same_content

    outside, unread = left_out(data_dir / split)
    if outside:
        warning_line(f"{_images(outside, f' of {data_dir / split}')} outside normal/ and ALL/ (e.g. {outside[0]};"
                     f" {found_folders(data_dir / split)}): left out; the class folder names are case-sensitive")
    if unread:
        formats = ", ".join(f"{suffix} {n}" for suffix, n in unread.most_common())
        warning_line(f"files in formats allscan does not read in {data_dir / split} ({formats}): left out")
    paths, labels = list_split(data_dir / split)
    both = same_content([p for p, y in zip(paths, labels) if y == 1], [p for p, y in zip(paths, labels) if y == 0])
    if both:
        warning_line(f"{_images(both)} in both normal/ and ALL/ of {data_dir / split} (the same content, e.g."
                     f" {both[0][0]} and {both[0][1]}): each is counted as both classes")
    for other in others:
        try:
            shared = same_content(paths, list_split(data_dir / other)[0]) if (data_dir / other).is_dir() else []
        except DatasetError:  # a split without images shares none
            continue
        if shared:
            warning_line(f"{_images(shared, f' of {data_dir / split}')} also in {data_dir / other} (the same content,"
                         f" e.g. {shared[0][0]} and {shared[0][1]}): {split}/ is not held out from {other}/ for them")


def _images(pairs: list, where: str = "") -> str:
    """``1 image is``, ``3 images are``, with ``where`` after the noun."""
    return f"1 image{where} is" if len(pairs) == 1 else f"{len(pairs)} images{where} are"


def _check_weights(weights: Path | None, model: str) -> None:
    """--weights names a file, for one architecture: found when a model is built, after the first of --model all
    has trained, either would stop the run."""
    if weights is None:
        return
    if model == "all":
        raise usage_error("--weights starts one architecture's backbone: give --model NAME with it")
    if not weights.is_file():
        raise usage_error(f"--weights {weights}: {'a folder, not a file' if weights.is_dir() else 'no such file'}")


def _check_ship_into(out: Path) -> None:
    """--out is a folder (or none yet) whose manifest, if any, can be read, in a folder where the copy that
    replaces it can be made, checked before anything trains: found when shipping, hours later, each would
    leave the run unshipped."""
    from allscan.models.manifest import ManifestError, load_or_empty
    from allscan.run.preflight import PreflightError, check_writable_folder

    if out.exists() and not out.is_dir():
        raise usage_error(f"models folder {out} is a file, not a folder")
    parent = out.resolve().parent
    while not parent.exists():  # the folders on the way are made when shipping
        parent = parent.parent
    with loading.refusing(PreflightError):
        check_writable_folder(parent, "parent folder of --out")
    with loading.refusing(ManifestError):
        load_or_empty(out)


def _refuse_replacing(run_dirs: list[Path]) -> None:
    from allscan.training.train import holds_run

    for run_dir in run_dirs:
        if holds_run(run_dir):
            raise usage_error(f"{run_dir} holds a run: give --resume to continue it, --restart to start it"
                              " again (deleting its checkpoints), or another --runs-dir")


_SETTINGS = {"epochs": ("epochs", "--epochs"), "batch_size": ("batch_size", "--batch-size"),
             "input_size": ("input_size", "--input-size"), "learning_rate": ("lr", "--lr"), "seed": ("seed", "--seed"),
             "blank_box": ("blank_box", "--blank-box"), "weights": ("weights", "--weights")}
"""Each training setting (a field of TrainConfig): its parameter and its option."""


def _given_settings(ctx: typer.Context, box) -> dict:
    """The settings given on the command line, by TrainConfig field (the label box parsed)."""
    return {name: box if param == "blank_box" else ctx.params[param] for name, (param, _) in _SETTINGS.items()
            if loading.given(ctx, param)}


def _run_config(spec, run_dir: Path, resume: bool, settings: dict, given: dict):
    """The settings to train ``spec`` with: for a fresh run, ``settings`` and the registry's defaults, the
    options ``given`` overriding them; to resume ``run_dir``, the run's own (its config.json), with the
    options ``given`` where they agree, or a larger --epochs.

    Raises:
        typer.Exit: An option given differs from the run's, or asks for fewer epochs than it has run.
    """
    from allscan.training.train import TrainConfig, differing_settings, resume_point

    point = resume_point(run_dir) if resume else None
    if point is None:
        if resume:
            warning_line(f"{run_dir} holds no checkpoint to resume: {spec.name} starts afresh")
        return replace(TrainConfig(spec.epochs, input_size=spec.input_size, learning_rate=spec.learning_rate,
                                   **settings), **given)
    saved, done = point
    config = replace(saved, **given)
    differing = [f"{_SETTINGS[k][1]} {_setting(getattr(config, k))} (the run's: {_setting(getattr(saved, k))})"
                 for k in differing_settings(saved, config)]
    if differing:
        raise usage_error(f"--resume: {run_dir} was started with other settings: {'; '.join(differing)}; give the"
                          " run's (or leave them out), or --restart it")
    if config.epochs < done:
        raise usage_error(f"--resume: {run_dir} has run {done} epochs already; give --epochs {done} or more")
    console.print(f"{spec.name}: resuming {run_dir} after epoch {done}, with the run's settings")
    return config


def _setting(value) -> str:
    """A setting as its option takes it."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command("train-cells")
def train_cells(ctx: typer.Context, data_dir: o.TrainData, out: o.ShipInto = Path("models"),
                runs_dir: o.RunsDir = None, epochs: o.Epochs = None, refine_epochs: o.RefineEpochs = 3,
                batch_size: o.CellBatch = 32, seed: o.Seed = 1, resume: o.Resume = False, restart: o.Restart = False,
                blank_box: o.TrainBlankBox = None) -> None:
    """Train the cell classifier from the fields' labels (two rounds of multiple-instance learning per member)
    and ship it into --out/cells with its calibration, threshold and review rule.

    As with `train`, runs are continued (--resume, with their own settings) or started again (--restart),
    never replaced unasked.
    """
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import CELL_MODEL_NAMES
    from allscan.paths import default_runs_dir
    from allscan.training.cell_ship import train_cell_classifier
    from allscan.training.dataset import ARIA_LABEL_BOX, DatasetError
    from allscan.training.train import RunSettingsError, TrainConfig, resume_point

    _check_shipping(data_dir, out)
    if resume and restart:
        raise usage_error("give --resume or --restart, not both")
    box = loading.label_box(blank_box, ARIA_LABEL_BOX)
    runs = runs_dir or default_runs_dir()
    stages = {name: (runs / "cells" / name / "weak", runs / "cells" / name / "mil") for name in CELL_MODEL_NAMES}
    if not resume and not restart:
        _refuse_replacing([folder for pair in stages.values() for folder in pair])
    given = {name: box if name == "blank_box" else ctx.params[name]
             for name in ("epochs", "batch_size", "seed", "blank_box") if loading.given(ctx, name)}

    def config(spec) -> TrainConfig:
        """A fresh run's settings, or to resume, the run's own with the options given (checked against them)."""
        point = resume_point(stages[spec.name][0]) if resume else None
        if point is not None:
            return replace(point[0], **given)
        return TrainConfig(epochs=epochs or spec.epochs, batch_size=batch_size, input_size=spec.input_size,
                           learning_rate=spec.learning_rate, seed=seed, blank_box=box)

    refined = resume_point(stages[CELL_MODEL_NAMES[0]][1]) if resume else None
    if refined is not None and not loading.given(ctx, "refine_epochs"):
        refine_epochs = refined[0].epochs

    def report(name, stage, e) -> None:
        console.print(f"{name} {stage} epoch {e.epoch:>2}  loss {e.loss:.4f}  val_loss {e.val_loss:.4f}"
                      f"  val_auc {e.val_auc:.4f}  ({e.seconds:.0f}s)")

    with loading.refusing(DatasetError, RunSettingsError):
        manifest = train_cell_classifier(data_dir, out, runs, CELL_MODEL_NAMES, config, refine_epochs, resume, report)
    print_cells_shipped(out / "cells", manifest)


@app.command("ship")
def ship_run(run_dir: o.RunDir, data_dir: o.RunData, out: o.ShipInto = Path("models")) -> None:
    """Ship the best epoch so far of a training run, finished or cut, with the same refits as `train`."""
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import get_spec
    from allscan.training.dataset import DatasetError
    from allscan.training.ship import ShipError, ship
    from allscan.training.train import load_run

    with loading.refusing(FileNotFoundError):
        result, config = load_run(run_dir)
    with loading.refusing(KeyError, message=lambda exc: exc.args[0]):
        spec = get_spec(result.name)
    _check_shipping(data_dir, out)
    with loading.refusing(DatasetError, ShipError):
        entry = ship(spec, result, config, data_dir, out)
    print_shipped(entry, result, out)


@app.command()
def tune(data_dir: o.ValData, models: o.Models = None, pool_train: o.PoolTrain = False,
         reconvert: o.Reconvert = False) -> None:
    """Refit the calibration, weights, screening threshold and review band on the validation split."""
    loading.require_train_extra(shipping=True)
    splits = ("val", "train") if pool_train or reconvert else ("val",)
    for sub in splits:
        if not (data_dir / sub).is_dir():
            raise usage_error(f"{data_dir / sub} not found")
    _check_classes(data_dir, splits)
    _warn_split(data_dir, "val", ("train",))
    loading.manifest(models)
    from allscan.fileio import replace_folder
    from allscan.models.ensemble import Ensemble
    from allscan.models.manifest import ManifestError
    from allscan.scoring.cells import CELLS_DIR
    from allscan.training.dataset import DatasetError
    from allscan.training.ship import refit

    def retune(folder: Path):
        """Refit the copy of the models folder that replaces it once every step has succeeded."""
        ensemble = Ensemble.load(folder)
        tuning = refit(ensemble, data_dir, pool_train, reconvert)
        if not (reconvert and (folder / CELLS_DIR).is_dir()):
            return tuning, None
        from allscan.training.cell_ship import reconvert_cells

        return tuning, reconvert_cells(data_dir, folder, ensemble.manifest.blank_box)

    models_dir = models or default_models_dir()
    with loading.refusing(DatasetError, ManifestError):
        tuning, cells = replace_folder(models_dir, retune)
    if cells is not None:
        print_cells_shipped(models_dir / CELLS_DIR, cells)
    config, point = tuning.config, tuning.operating_point
    console.print(f"weights {config.weights}; threshold {config.threshold:.4f} (recall {point.recall:.4f},"
                  f" lower 95% bound {point.recall_lower:.4f}{'' if point.target_met else ', below the target'});"
                  f" review band {config.review_band[0]:.3f}–{config.review_band[1]:.3f}"
                  f" ({100 * tuning.flagged:.1f}% of val)")


@app.command()
def evaluate(data_dir: o.SplitData, split: o.Split = "test", out: o.FiguresOut = None, models: o.Models = None,
             box: o.Box = "blank", blank_box: o.BlankBox = None, shortcut_check: o.ShortcutCheck = False,
             plots: o.Plots = None, runtime: o.Runtime = "auto") -> None:
    """Accuracy, precision, recall, specificity, F1, balanced accuracy, ROC AUC, Brier score and expected
    calibration error per model and for the ensemble, each with its 95% interval."""
    loading.require_train_extra()
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise usage_error(f"{split_dir} not found")
    from allscan.training.dataset import DatasetError, check_classes

    with loading.refusing(DatasetError):
        present = check_classes(split_dir, both=False)
    _check_figure_outputs(out, plots, loading.manifest(models).models)
    if len(present) == 1:
        warning_line(_one_class(split_dir, present[0]))
    _warn_split(data_dir, split, tuple(s for s in SPLITS if s != split))
    from allscan.fileio import atomic_write_text
    from allscan.training.evaluate import BOX_MODES, evaluate as evaluate_split, shortcut_check as check_shortcut

    if box not in BOX_MODES:
        raise usage_error(f"--box must be one of {', '.join(BOX_MODES)}")
    pipeline = loading.pipeline(models, runtime=runtime)
    label_box = loading.label_box(blank_box, pipeline.ensemble.manifest.blank_box)
    if shortcut_check and label_box is None:
        raise usage_error("--shortcut-check needs a label box (--blank-box or the manifest's)")
    with loading.refusing(DatasetError):
        result = evaluate_split(pipeline, split_dir, label_box, box)
    print_evaluation(split, box, result)
    payload = result.to_dict() | {"split": split, "box": box, "models_digest": pipeline.ensemble.manifest.digest}
    if plots is not None:
        from allscan.training.plots import CURVE_FILES, write_plots

        pred = result.predictions
        written = write_plots(plots, pred.labels, {**pred.per_model, "ensemble": pred.ensemble},
                              {**result.models, "ensemble": result.ensemble})
        left = "" if plots / CURVE_FILES[0] in written else " (no ROC or precision-recall figure: one class)"
        console.print(f"plots written to {plots}{left}")
    if shortcut_check:
        check = check_shortcut(pipeline, split_dir, label_box, result)
        payload["shortcut_check"] = check.to_dict()
        print_shortcut_check(check)
    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2, allow_nan=False) + "\n")
        console.print(f"figures written to {out}")


def _check_figure_outputs(out: Path | None, plots: Path | None, models) -> None:
    """--out can be written and --plots is a folder that can, where each file to be replaced is one allscan
    wrote (a figures file, a figure), before the models load."""
    from allscan.run.preflight import (OWN_FIGURE, OWN_FIGURES, PreflightError, check_own_file, check_writable_file,
                                       check_writable_folder)
    from allscan.training.plots import plot_files

    with loading.refusing(PreflightError):
        if out is not None:
            check_writable_file(out, "figures file")
            check_own_file(out, "figures file", "--out", OWN_FIGURES)
        if plots is not None:
            check_writable_folder(plots, "plots folder")
            for path in plot_files(plots, [*models, "ensemble"]):
                check_own_file(path, "plot", "--plots", OWN_FIGURE)


def _one_class(split_dir: Path, present: str) -> str:
    from allscan.training.dataset import found_folders

    return (f"{split_dir} holds only {present} images ({found_folders(split_dir)}): the figures that need both"
            " classes are shown as – and written as null")


@app.command("fit-domain")
def fit_domain(data_dir: o.DomainData, models: o.Models = None) -> None:
    """Refit the domain reference (red-cell size, stain reference, out-of-domain guard) for the models
    on the training split, thresholds on val; the training command's shipping step runs it too."""
    loading.manifest(models)
    from allscan.fileio import replace_folder
    from allscan.models.manifest import ManifestError
    from allscan.training.dataset import DatasetError
    from allscan.training.fit_domain import refit_domain

    with loading.refusing(ManifestError, FileNotFoundError, DatasetError):
        reference = replace_folder(models or default_models_dir(), lambda folder: refit_domain(folder, data_dir))
    console.print(f"domain reference: red cells {reference.checks.rbc_diameter:.1f} px; {reference.fitted_on}")
