"""Turning a finished training run into a shipped model: file, checksum, manifest entry, refitted statistics.

Shipping is four steps: save the model (float16) and its manifest entry; convert it to OpenVINO,
int8 where that keeps its answers (:mod:`allscan.training.convert`); refit the domain reference
(red-cell size, stain reference, out-of-domain guard); then :func:`refit` every statistic the
shipped ensemble derives from data, so that a new model never ships beside statistics fitted to
the models it replaced, nor to another runtime's outputs. The steps run on a copy of the models
folder that takes its place only when all four succeeded (:func:`allscan.fileio.replace_folder`):
a failure or an interrupt leaves the folder as it was.
"""

from dataclasses import asdict, replace
from pathlib import Path

from allscan._tf import keras
from allscan.fileio import replace_folder
from allscan.training.augment import RECIPE as AUGMENTATION_RECIPE
from allscan.training.convert import convert_models
from allscan.training.dataset import list_split, load_images
from allscan.training.fit_domain import refit_domain
from allscan.models.ensemble import Ensemble
from allscan.scoring.pipeline import Pipeline
from allscan.training.evaluate import split_probabilities
from allscan.models.manifest import ModelEntry, equal_weights, load_or_empty, save_manifest, sha256_file
from allscan.training.metrics import compute_metrics
from allscan.models.files import save_half_precision
from allscan.models.registry import CELL_REGISTRY, ModelSpec
from allscan.models.runtime import choose_runtime
from allscan.training.train import TrainConfig, TrainResult
from allscan.training.tune import Tuning, tune_ensemble

DATASET = (
    "Aria M, Ghaderzadeh M, Bashash D, Abolghasemi H, Asadi F, Hosseini A. Acute Lymphoblastic Leukemia (ALL)"
    " image dataset. Kaggle, 2021. doi:10.34740/KAGGLE/DSV/2175623"
)


class ShipError(ValueError):
    """A run whose best epoch cannot be loaded, or is not the model it names (a cell classifier's run shipped as
    a field model)."""


def _best_epoch(spec: ModelSpec, result: TrainResult, config: TrainConfig):
    """The run's best checkpoint, checked not to be the cell classifier's member of the same name: its runs
    (``cells/vgg16/weak``, ``…/mil``) name it as the field model, and shipped as one it would replace that
    field model without a word.

    Raises:
        ShipError: It cannot be loaded, or is the cell classifier's network (told by its parameter count).
    """
    try:
        model = keras.models.load_model(result.best_path, compile=False)
    except Exception:  # Keras reports a damaged file as one of several errors, some saying it is not found
        raise ShipError(f"the run's best epoch {result.best_path} is damaged or incomplete") from None
    cell = CELL_REGISTRY.get(spec.name)
    if cell is not None and model.count_params() == cell.build(config.input_size).count_params():
        raise ShipError(f"{result.best_path} is the cell classifier's {spec.name}, not the field model: a run of the"
                        " cell classifier ships with allscan train-cells --resume")
    return model


def validation_figures(model, spec: ModelSpec, data_dir: Path, config: TrainConfig) -> dict:
    """Metrics of ``model`` on ``data_dir/val`` at threshold 0.5."""
    paths, labels = list_split(Path(data_dir) / "val")
    images = load_images(paths, config.input_size, config.blank_box)
    x = spec.preprocess(images.astype("float32"))
    p = model.predict(x, batch_size=64, verbose=0).reshape(-1)
    return compute_metrics(labels, p, 0.5).to_dict()


def ship(spec: ModelSpec, result: TrainResult, config: TrainConfig, data_dir: Path, models_dir: Path) -> ModelEntry:
    """Ship ``result``'s best checkpoint into ``models_dir`` all or nothing: :func:`_ship_into` a copy of the
    folder, which then replaces it (:func:`allscan.fileio.replace_folder`). Returns the model's entry."""
    return replace_folder(models_dir, lambda folder: _ship_into(spec, result, config, data_dir, folder))


def _ship_into(spec: ModelSpec, result: TrainResult, config: TrainConfig, data_dir: Path,
               models_dir: Path) -> ModelEntry:
    """Save the best checkpoint in ``models_dir`` (float16 weights), record it in the manifest, convert it to
    OpenVINO (:func:`allscan.training.convert.convert_models`), refit the domain reference for the new set
    of models (:func:`allscan.training.fit_domain.refit_domain`), then :func:`refit`. Each step writes in
    place: :func:`ship` runs them on a copy."""
    models_dir = Path(models_dir)
    model = _best_epoch(spec, result, config)
    target = models_dir / f"{spec.name}.keras"
    save_half_precision(model, target)
    shipped = keras.models.load_model(target, compile=False, safe_mode=True)
    entry = ModelEntry(
        name=spec.name,
        file=target.name,
        sha256=sha256_file(target),
        input_size=config.input_size,
        preprocessing=spec.preprocessing,
        architecture=spec.architecture,
        training={
            "data": str(data_dir),
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 5),
            "seconds": round(result.seconds, 1),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "recipe": "AdamW, warm-up + cosine decay, balanced class weights, dropout before the classifier,"
                      " batch-norm statistics re-estimated on clean training batches, best epoch by validation loss",
            "augmentation": AUGMENTATION_RECIPE,
        },
        validation=validation_figures(shipped, spec, data_dir, config),
    )
    manifest = load_or_empty(models_dir).with_model(entry)
    manifest = replace(
        manifest,
        blank_box=config.blank_box,
        dataset=manifest.dataset or DATASET,
        ensemble=replace(manifest.ensemble, weights=equal_weights(manifest.models), tuned_on=""),
    )
    save_manifest(manifest, models_dir)  # the new entry has no OpenVINO files: the old ones came from the old model
    convert_models(models_dir, data_dir)
    refit_domain(models_dir, data_dir)
    refit(Ensemble.load(models_dir), data_dir)
    return entry


def refit(ensemble: Ensemble, data_dir: Path, pool_train: bool = False, reconvert: bool = False) -> Tuning:
    """Refit, on ``data_dir/val``, every statistic the shipped ``ensemble`` derives from data; update its manifest.

    Today that is the calibration, the vote weights, the screening threshold and the review band
    (:func:`allscan.training.tune.tune_ensemble`). Any further shipped statistic gets its own step here.
    They are fitted on the outputs of the runtime that scores by default: members without OpenVINO
    files are converted first (and the domain reference refitted for them), and an ensemble loaded
    with another runtime is loaded again with the default one.
    ``pool_train`` adds the training split's predictions to the calibration and the threshold's
    second check: sound only for models that do not fit their training split better than validation
    (compare the two before using it). ``reconvert`` converts every member again (after a change of the
    conversion rule, or on a machine with other CPU units), not only those without OpenVINO files.
    """
    models_dir = ensemble.models_dir
    if convert_models(models_dir, data_dir, list(ensemble.manifest.models) if reconvert else None):
        refit_domain(models_dir, data_dir)
        ensemble = Ensemble.load(models_dir)
    elif ensemble.runtime != choose_runtime("auto", ensemble.manifest):
        ensemble = Ensemble.load(models_dir)
    pipeline = Pipeline(ensemble)
    box = ensemble.manifest.blank_box
    probs, labels = split_probabilities(pipeline, Path(data_dir) / "val", box)
    pool = split_probabilities(pipeline, Path(data_dir) / "train", box) if pool_train else None
    tuned_on = f"val split of {data_dir} ({len(labels)} images)" + (
        f", calibration and threshold check pooled with its train split ({len(pool[1])} images)" if pool else "")
    tuning = tune_ensemble(probs, labels, tuned_on, pool)
    save_manifest(replace(ensemble.manifest, ensemble=tuning.config), ensemble.models_dir)
    return tuning
