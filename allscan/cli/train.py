"""Model commands: list the shipped ``models``; ``train``, ``train-cells``, ``ship``, ``tune``, ``evaluate``
and ``fit-domain`` (the ``train`` extra)."""

import json
from pathlib import Path

from allscan.cli import loading, options as o
from allscan.cli.app import app, console, usage_error
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
    """List the models in the models folder, and its cell classifier, with their checksums and validation figures."""
    from allscan.models.manifest import ManifestError, load_manifest
    from allscan.models.registry import REGISTRY
    from allscan.scoring.cells import CELLS_DIR

    folder = models or default_models_dir()
    models_table(folder, loading.manifest(models), REGISTRY)
    if (folder / CELLS_DIR).is_dir():
        with loading.refusing(ManifestError):
            cell_models_table(folder / CELLS_DIR, load_manifest(folder / CELLS_DIR))


@app.command()
def train(data_dir: o.TrainData, model: o.ModelName = "all", out: o.ShipInto = Path("models"),
          runs_dir: o.RunsDir = None, epochs: o.Epochs = None, batch_size: o.StepBatch = 16,
          input_size: o.InputSize = None, lr: o.LearningRate = None, seed: o.Seed = 1, weights: o.Weights = None,
          resume: o.Resume = False, blank_box: o.TrainBlankBox = None) -> None:
    """Train one or all four models, checkpointing every epoch, and ship the best epoch into --out."""
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import MODEL_NAMES, get_spec
    from allscan.paths import default_runs_dir
    from allscan.training.dataset import ARIA_LABEL_BOX
    from allscan.training.ship import ship
    from allscan.training.train import TrainConfig, train as train_model

    with loading.refusing(KeyError, message=lambda exc: exc.args[0]):
        specs = [get_spec(n) for n in (MODEL_NAMES if model == "all" else (model,))]
    loading.require_splits(data_dir)
    box = loading.label_box(blank_box, ARIA_LABEL_BOX)
    runs = runs_dir or default_runs_dir()
    for spec in specs:
        config = TrainConfig(
            epochs=epochs or spec.epochs, batch_size=batch_size, input_size=input_size or spec.input_size,
            learning_rate=lr or spec.learning_rate, seed=seed, blank_box=box, weights=weights,
        )
        console.print(f"[bold]{spec.name}[/]: {config.input_size}px, {config.epochs} epochs, batch"
                      f" {config.batch_size}, lr {config.learning_rate:g}; checkpoints in {runs / spec.name}")
        with TrainingProgress(spec.name, config.epochs) as progress:
            result = train_model(spec, data_dir, runs / spec.name, config, resume, progress.epoch, progress.started)
        print_shipped(ship(spec, result, config, data_dir, out), result, out)


@app.command("train-cells")
def train_cells(data_dir: o.TrainData, out: o.ShipInto = Path("models"), runs_dir: o.RunsDir = None,
                epochs: o.Epochs = None, refine_epochs: o.RefineEpochs = 3, batch_size: o.CellBatch = 32,
                seed: o.Seed = 1, resume: o.Resume = False, blank_box: o.TrainBlankBox = None) -> None:
    """Train the cell classifier from the fields' labels (two rounds of multiple-instance learning per member)
    and ship it into --out/cells with its calibration, threshold and review rule."""
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import CELL_MODEL_NAMES
    from allscan.paths import default_runs_dir
    from allscan.training.cell_ship import train_cell_classifier
    from allscan.training.dataset import ARIA_LABEL_BOX
    from allscan.training.train import TrainConfig

    loading.require_splits(data_dir)
    box = loading.label_box(blank_box, ARIA_LABEL_BOX)
    runs = runs_dir or default_runs_dir()

    def config(spec) -> TrainConfig:
        return TrainConfig(epochs=epochs or spec.epochs, batch_size=batch_size, input_size=spec.input_size,
                           learning_rate=spec.learning_rate, seed=seed, blank_box=box)

    def report(name, stage, e) -> None:
        console.print(f"{name} {stage} epoch {e.epoch:>2}  loss {e.loss:.4f}  val_loss {e.val_loss:.4f}"
                      f"  val_auc {e.val_auc:.4f}  ({e.seconds:.0f}s)")

    manifest = train_cell_classifier(data_dir, out, runs, CELL_MODEL_NAMES, config, refine_epochs, resume, report)
    print_cells_shipped(out / "cells", manifest)


@app.command("ship")
def ship_run(run_dir: o.RunDir, data_dir: o.RunData, out: o.ShipInto = Path("models")) -> None:
    """Ship the best epoch so far of a training run, finished or cut, with the same refits as `train`."""
    loading.require_train_extra(shipping=True)
    from allscan.models.registry import get_spec
    from allscan.training.ship import ship
    from allscan.training.train import load_run

    with loading.refusing(FileNotFoundError):
        result, config = load_run(run_dir)
    with loading.refusing(KeyError, message=lambda exc: exc.args[0]):
        spec = get_spec(result.name)
    loading.require_splits(data_dir)
    print_shipped(ship(spec, result, config, data_dir, out), result, out)


@app.command()
def tune(data_dir: o.ValData, models: o.Models = None, pool_train: o.PoolTrain = False,
         reconvert: o.Reconvert = False) -> None:
    """Refit the calibration, weights, screening threshold and review band on the validation split."""
    loading.require_train_extra(shipping=True)
    from allscan.scoring.cells import CELLS_DIR
    from allscan.training.ship import refit

    for sub in ("val", "train") if pool_train or reconvert else ("val",):
        if not (data_dir / sub).is_dir():
            raise usage_error(f"{data_dir / sub} not found")
    ensemble = loading.ensemble(models)
    tuning = refit(ensemble, data_dir, pool_train, reconvert)
    cells = ensemble.models_dir / CELLS_DIR
    if reconvert and cells.is_dir():
        from allscan.training.cell_ship import reconvert_cells

        print_cells_shipped(cells, reconvert_cells(data_dir, ensemble.models_dir, ensemble.manifest.blank_box))
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
    from allscan.fileio import atomic_write_text
    from allscan.training.evaluate import BOX_MODES, evaluate as evaluate_split, shortcut_check as check_shortcut

    if box not in BOX_MODES:
        raise usage_error(f"--box must be one of {', '.join(BOX_MODES)}")
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise usage_error(f"{split_dir} not found")
    pipeline = loading.pipeline(models, runtime=runtime)
    label_box = loading.label_box(blank_box, pipeline.ensemble.manifest.blank_box)
    if shortcut_check and label_box is None:
        raise usage_error("--shortcut-check needs a label box (--blank-box or the manifest's)")
    result = evaluate_split(pipeline, split_dir, label_box, box)
    print_evaluation(split, box, result)
    payload = result.to_dict() | {"split": split, "box": box, "models_digest": pipeline.ensemble.manifest.digest}
    if plots is not None:
        from allscan.training.plots import write_plots

        pred = result.predictions
        write_plots(plots, pred.labels, {**pred.per_model, "ensemble": pred.ensemble},
                    {**result.models, "ensemble": result.ensemble})
        console.print(f"plots written to {plots}")
    if shortcut_check:
        check = check_shortcut(pipeline, split_dir, label_box, result)
        payload["shortcut_check"] = check.to_dict()
        print_shortcut_check(check)
    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
        console.print(f"figures written to {out}")


@app.command("fit-domain")
def fit_domain(data_dir: o.DomainData, models: o.Models = None) -> None:
    """Refit the domain reference (red-cell size, stain reference, out-of-domain guard) for the models
    on the training split, thresholds on val; the training command's shipping step runs it too."""
    from allscan.models.manifest import ManifestError
    from allscan.training.fit_domain import refit_domain

    with loading.refusing(ManifestError, FileNotFoundError):
        reference = refit_domain(models or default_models_dir(), data_dir)
    console.print(f"domain reference: red cells {reference.checks.rbc_diameter:.1f} px; {reference.fitted_on}")
