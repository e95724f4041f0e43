"""Training one ensemble member: data, augmentation, schedule, checkpoints and resume."""

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from allscan._tf import keras, tf
from allscan.training.augment import augment_image, geometry_layers
from allscan.training.dataset import LabelledSet, load_split
from allscan.models.registry import ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    """Settings for one training run; defaults come from the model's registry entry.

    Attributes:
        epochs: Number of epochs.
        batch_size: Images per step.
        input_size: Square input side in pixels.
        learning_rate: Peak learning rate of the warm-up + cosine schedule.
        weight_decay: AdamW decoupled weight decay.
        seed: Seed for shuffling, augmentation and initialisation.
        blank_box: Box blanked in every image when loading, or None.
        weights: Optional weights file to start the backbone from (e.g. ImageNet weights on disk).
    """

    epochs: int
    batch_size: int
    input_size: int
    learning_rate: float
    weight_decay: float = 1e-4
    seed: int = 1
    blank_box: tuple[int, int, int, int] | None = None
    weights: Path | None = None


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Where the best model went and how it scored on validation; ``seconds`` sums every epoch run."""

    name: str
    best_path: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[EpochLog]


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced class weights: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * max(counts[c], 1))) for c in (0, 1)}


def make_dataset(data: LabelledSet, spec: ModelSpec, batch_size: int, seed: int, train: bool,
                 shuffle: bool = False):
    """A tf.data pipeline of preprocessed batches; augmented and shuffled when ``train``."""
    ds = tf.data.Dataset.from_tensor_slices((data.images, data.labels.astype(np.float32)))
    preprocess = spec.preprocess
    if shuffle and not train:
        ds = ds.shuffle(len(data.labels), seed=seed + 7, reshuffle_each_iteration=True)
    if train:
        geometry = geometry_layers(seed)
        ds = ds.shuffle(len(data.labels), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda x, y: (augment_image(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, y: (preprocess(geometry(x, training=True)), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.batch(batch_size).map(lambda x, y: (preprocess(tf.cast(x, tf.float32)), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def _schedule(config: TrainConfig, steps_per_epoch: int):
    """Warm-up, then cosine decay to 1% of the learning rate at the end of ``config.epochs``."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 5)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
        alpha=0.01,
    )


def _compile(model, config: TrainConfig, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=_schedule(config, steps_per_epoch),
                                         weight_decay=config.weight_decay),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


RECALIBRATION_BATCHES = 40


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer, nested backbones included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def recalibrate_batchnorm(model, batches) -> None:
    """Re-estimate batch-norm statistics as the plain average over clean training batches.

    The moving averages kept during training trail the weights and were measured on
    augmented batches; on this data they left deep layers' statistics far off (the
    model scored 94% on training images with re-estimated statistics and 21% with
    the moving averages). This "precise BN" pass fixes them for inference.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    saved = [layer.momentum for layer in layers]
    try:
        for k, (x, _) in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / k
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


class _EpochState(keras.callbacks.Callback):
    """Re-estimates batch-norm statistics, validates, saves the last epoch (for resume) and the best
    by validation loss, and reports each epoch."""

    def __init__(self, run_dir: Path, best_val_loss: float, report: Callable[[EpochLog], None],
                 calibration, validation):
        super().__init__()
        self.run_dir = run_dir
        self.best_val_loss = best_val_loss
        self.report = report
        self.calibration = calibration
        self.validation = validation
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        recalibrate_batchnorm(self.model, self.calibration.take(RECALIBRATION_BATCHES))
        scores = self.model.evaluate(self.validation, verbose=0, return_dict=True)
        logs.update({f"val_{k}": float(v) for k, v in scores.items()})
        entry = EpochLog(
            epoch + 1,
            float(logs.get("loss", np.nan)),
            float(logs.get("val_loss", np.nan)),
            float(logs.get("val_accuracy", np.nan)),
            float(logs.get("val_auc", np.nan)),
            time.monotonic() - self.started,
        )
        if entry.val_loss < self.best_val_loss:
            self.best_val_loss = entry.val_loss
            _save_model(self.model, self.run_dir / "best.keras")
            _write_json(self.run_dir / "best.json", asdict(entry))
        _save_model(self.model, self.run_dir / "last.keras")
        _write_json(self.run_dir / "state.json", {"epochs_done": entry.epoch, "best_val_loss": self.best_val_loss})
        with open(self.run_dir / "history.jsonl", "a") as handle:
            handle.write(json.dumps(asdict(entry)) + "\n")
        self.report(entry)


class RunSettingsError(ValueError):
    """A run that cannot be resumed as asked: with other settings than it was started with (the message names
    them), or from a checkpoint that cannot be loaded."""


class WeightsError(ValueError):
    """A --weights file that cannot be read or does not fit the model; the message names it."""


def differing_settings(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The settings of ``config`` that differ from a run's ``saved`` ones, but for ``epochs``: a resumed run
    keeps its data, model and schedule (its optimiser is restored), and may only run longer."""
    return [f.name for f in fields(TrainConfig)
            if f.name != "epochs" and getattr(config, f.name) != getattr(saved, f.name)]


def resume_point(run_dir: Path) -> tuple[TrainConfig, int] | None:
    """A run folder's settings and the epochs it has completed, or None when it holds no checkpoint to resume."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in ("config.json", "state.json", "last.keras")):
        return None
    return read_config(run_dir), int(json.loads((run_dir / "state.json").read_text())["epochs_done"])


_RUN_FILES = ("history.jsonl", "best.json", "state.json", "best.keras", "last.keras")
"""What a run leaves in its folder besides config.json and log.csv; a fresh start deletes them."""


def _check_resumable(run_dir: Path, saved: TrainConfig, epochs_done: int, config: TrainConfig) -> None:
    # The weights a run started from do not matter to resuming it (from its last checkpoint); a --weights given
    # that differs is refused by the command. A cell classifier's second round starts from its first round's
    # best epoch, by a path that differs if the runs folder is spelt otherwise or was moved.
    differing = [name for name in differing_settings(saved, config) if name != "weights"]
    if differing:
        raise RunSettingsError(f"{run_dir} was started with other {', '.join(differing)}; resume it with its own")
    if config.epochs < epochs_done:
        raise RunSettingsError(f"{run_dir} has run {epochs_done} epochs already, more than the {config.epochs} asked")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's checkpoints (that a fresh start would delete)."""
    return any((Path(run_dir) / name).is_file() for name in _RUN_FILES)


def _save_model(model, path: Path) -> None:
    """Save ``model`` to ``path`` whole or not at all: a run killed while saving (Ctrl-C twice, SIGKILL, a
    session's end) keeps its previous checkpoint rather than half of a new one, which nothing can load."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")  # Keras wants the suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build(spec: ModelSpec, config: TrainConfig):
    """A fresh model, its backbone from ``config.weights`` when given.

    Raises:
        WeightsError: They cannot be read, or are another architecture's or input size's.
    """
    if config.weights is None:
        return spec.build(config.input_size)
    try:
        return spec.build(config.input_size, weights=config.weights)
    except Exception as err:  # h5py, Keras and the file system each raise their own
        raise WeightsError(f"cannot start {spec.name} from the weights file {config.weights}: {err}") from None


def _load_checkpoint(run_dir: Path):
    """The run's last checkpoint, to resume from.

    Raises:
        RunSettingsError: It cannot be loaded (damaged, say, by a kill while an older allscan saved it).
    """
    path = run_dir / "last.keras"
    try:
        return keras.models.load_model(path)
    except Exception:  # Keras reports a damaged file as one of several errors, some saying it is not found
        raise RunSettingsError(f"cannot resume {run_dir}: its last checkpoint {path} is damaged or incomplete; ship"
                               " its best epoch so far with allscan ship, or --restart the run") from None


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def train(
    spec: ModelSpec,
    data_dir: Path,
    run_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    report: Callable[[EpochLog], None] = lambda entry: None,
    on_start: Callable[[int, int], None] = lambda epochs_done, epochs: None,
) -> TrainResult:
    """Train ``spec`` on ``data_dir/train``, validating on ``data_dir/val``.

    Checkpoints go to ``run_dir``: ``last.keras`` after every epoch (so ``resume``
    continues a cut run) and ``best.keras``, the epoch with the lowest validation loss.
    """
    keras.utils.set_random_seed(config.seed)
    train_set = load_split(Path(data_dir) / "train", config.input_size, config.blank_box)
    val_set = load_split(Path(data_dir) / "val", config.input_size, config.blank_box)
    return fit(spec, train_set, val_set, run_dir, config, resume, report, on_start)


def fit(
    spec: ModelSpec,
    train_set: LabelledSet,
    val_set: LabelledSet,
    run_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    report: Callable[[EpochLog], None] = lambda entry: None,
    on_start: Callable[[int, int], None] = lambda epochs_done, epochs: None,
) -> TrainResult:
    """Train ``spec`` on images already loaded at its input size (see :func:`train`).

    ``config.json`` is written once the model is built, or restored for ``resume``.

    Raises:
        RunSettingsError: ``resume`` with settings other than the run's, or fewer epochs than it has run.
        ValueError: ``config.batch_size`` is larger than the training set.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    steps = len(train_set.labels) // config.batch_size
    if steps == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the training set ({len(train_set.labels)})")

    epochs_done, best_val_loss = 0, float("inf")
    point = resume_point(run_dir) if resume else None
    if point is not None:
        _check_resumable(run_dir, *point, config)
        state = json.loads((run_dir / "state.json").read_text())
        epochs_done, best_val_loss = int(state["epochs_done"]), float(state["best_val_loss"])
        model = _load_checkpoint(run_dir)
        # The checkpoint's schedule ends at the epochs first planned, and stays at its floor after them: a run
        # extended by --epochs would train its added epochs at 1% of the learning rate.
        model.optimizer.learning_rate = _schedule(config, steps)
    else:
        for stale in _RUN_FILES:
            (run_dir / stale).unlink(missing_ok=True)
        model = _build(spec, config)
        _compile(model, config, steps)
    _write_json(run_dir / "config.json", {**asdict(config), "model": spec.name, "weights": str(config.weights)})
    on_start(epochs_done, config.epochs)

    calibration = make_dataset(train_set, spec, config.batch_size, config.seed, train=False, shuffle=True)
    validation = make_dataset(val_set, spec, config.batch_size, config.seed, train=False)
    callback = _EpochState(run_dir, best_val_loss, report, calibration, validation)
    if epochs_done < config.epochs:
        model.fit(
            make_dataset(train_set, spec, config.batch_size, config.seed, train=True),
            epochs=config.epochs,
            initial_epoch=epochs_done,
            class_weight=class_weights(train_set.labels),
            callbacks=[callback, keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=epochs_done > 0)],
            verbose=0,
        )
    return load_run(run_dir)[0]


def load_run(run_dir: Path) -> tuple[TrainResult, TrainConfig]:
    """The best checkpoint of a run folder so far, finished or cut, and the run's settings.

    Raises:
        FileNotFoundError: ``run_dir`` holds no completed epoch.
    """
    run_dir = Path(run_dir)
    needed = [run_dir / name for name in ("config.json", "history.jsonl", "best.json", "best.keras")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} holds no completed epoch (missing {', '.join(missing)})")
    name = json.loads((run_dir / "config.json").read_text())["model"]
    history = [EpochLog(**json.loads(line)) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    best = json.loads((run_dir / "best.json").read_text())
    result = TrainResult(
        name,
        run_dir / "best.keras",
        int(best["epoch"]),
        float(best["val_loss"]),
        len(history),
        sum(e.seconds for e in history),
        history,
    )
    return result, read_config(run_dir)


def read_config(run_dir: Path) -> TrainConfig:
    """The settings a run was started with (its ``config.json``)."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    del saved["model"]
    weights = saved.pop("weights")
    box = saved.pop("blank_box")
    return TrainConfig(**saved, blank_box=tuple(box) if box else None,
                       weights=None if weights in (None, "None") else Path(weights))
