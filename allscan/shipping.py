"""Turning a finished training run into a shipped model: file, checksum and manifest entry."""

from dataclasses import asdict, replace
from pathlib import Path

from allscan._tf import keras
from allscan.augment import RECIPE as AUGMENTATION_RECIPE
from allscan.dataset import list_split, load_images
from allscan.manifest import ModelEntry, equal_weights, load_or_empty, save_manifest, sha256_file
from allscan.metrics import compute_metrics
from allscan.model_files import save_half_precision
from allscan.registry import ModelSpec
from allscan.training import TrainConfig, TrainResult

DATASET = (
    "Aria M, Ghaderzadeh M, Bashash D, Abolghasemi H, Asadi F, Hosseini A. Acute Lymphoblastic Leukemia (ALL)"
    " image dataset. Kaggle, 2021. doi:10.34740/KAGGLE/DSV/2175623"
)


def validation_figures(model, spec: ModelSpec, data_dir: Path, config: TrainConfig) -> dict:
    """Metrics of ``model`` on ``data_dir/val`` at threshold 0.5."""
    paths, labels = list_split(Path(data_dir) / "val")
    images = load_images(paths, config.input_size, config.blank_box)
    x = spec.preprocess(images.astype("float32"))
    p = model.predict(x, batch_size=64, verbose=0).reshape(-1)
    return compute_metrics(labels, p, 0.5).to_dict()


def ship(spec: ModelSpec, result: TrainResult, config: TrainConfig, data_dir: Path, models_dir: Path) -> ModelEntry:
    """Save the best checkpoint in ``models_dir`` (float16 weights) and record it in the manifest."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(result.best_path, compile=False)
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
    save_manifest(manifest, models_dir)
    return entry
