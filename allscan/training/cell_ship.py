"""Shipping the cell classifier: its members' files and manifest in ``models/cells/``, calibrated and
with its threshold and review rule fitted on the validation split's cells.

- **Calibration**: a Platt scaling per member and one of their mean, fitted on round two's labels
  (:func:`allscan.training.cell_train.refined_labels` by the members' mean): the top half of each ALL
  field's cells are blasts, every benign field's cells are not.
- **Threshold**: the lowest p(blast) at which at most :data:`BENIGN_RATE` of the benign fields' cells are
  called blast (the target is 5% on test; half of it leaves room for the split's differences).
- **Review rule** (:class:`allscan.scoring.cells.CellRule`): ``confident`` is the p(blast) that
  :data:`RULE_QUANTILE` of benign cells stay below; ``min_blasts`` the fewest confident cells that at most
  :data:`RULE_FIELDS` of benign fields hold.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from allscan._tf import keras
from allscan.fileio import atomic_write_text, replace_folder
from allscan.models.calibration import Calibration, fit_platt, weighted_mean
from allscan.models.files import save_half_precision
from allscan.domain.reference import DomainReference
from allscan.models.manifest import (EnsembleConfig, Manifest, ModelEntry, equal_weights, load_manifest, load_or_empty,
                                     save_manifest, sha256_file)
from allscan.models.registry import CELL_REGISTRY, ModelSpec
from allscan.scoring.cells import CELLS_DIR, RULE_NAME, CellClassifier, CellRule
from allscan.training.augment import RECIPE as AUGMENTATION_RECIPE
from allscan.training.cell_data import CellBags, load_cell_bags
from allscan.training.cell_evaluate import field_figures
from allscan.training.convert import calibration_sample, convert_member
from allscan.training.cell_train import MIL_TOP, REFINE_RATE, refined_labels, train_member
from allscan.training.ship import DATASET
from allscan.training.train import EpochLog, TrainConfig, TrainResult, load_run

DEFAULT_RBC_DIAMETER = 15.5
"""Red-cell diameter (px) of a training field whose size cannot be estimated, when the models came without
a domain reference to take it from (Aria's fields measure 15.5)."""
BENIGN_RATE = 0.025
RULE_QUANTILE = 0.995
RULE_FIELDS = 0.02

RECIPE = (f"multiple-instance learning from field labels: round one labels every cell with its field's label;"
          f" round two fine-tunes (learning rate x{REFINE_RATE:g}) on the top {MIL_TOP:.0%} of each ALL field's"
          f" cells by round one's model as blasts and every benign field's cells as not; AdamW, warm-up + cosine"
          f" decay, balanced class weights, dropout, batch-norm statistics re-estimated on clean batches, best"
          f" epoch by validation loss in each round")


def cell_threshold(p: np.ndarray, benign: np.ndarray, rate: float = BENIGN_RATE) -> float:
    """The lowest threshold at which at most ``rate`` of the benign cells (``benign`` mask) reach it."""
    scores = np.sort(p[benign])[::-1]
    allowed = int(np.floor(rate * len(scores)))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], 1.0))


def fit_rule(p: np.ndarray, field: np.ndarray, labels: np.ndarray, described: str) -> CellRule:
    """The review rule on the validation cells (see the module docstring)."""
    benign_cells = labels[field] == 0
    confident = float(min(0.999, np.quantile(p[benign_cells], RULE_QUANTILE)))
    per_field = np.bincount(field[p >= confident], minlength=len(labels))[labels == 0]
    min_blasts = 1
    while (per_field >= min_blasts).mean() > RULE_FIELDS:
        min_blasts += 1
    return CellRule(min_blasts, round(confident, 4), described)


def ship_cells(members: dict[str, tuple[TrainResult, TrainConfig]], train: CellBags, val: CellBags,
               models_dir: Path, data: str, convert: bool = True) -> Manifest:
    """Save each member's best checkpoint (float16) in ``models_dir/cells`` and record it in the manifest,
    then :func:`fit_cells`, all on a copy of ``models_dir`` that replaces it only when every step succeeded
    (:func:`allscan.fileio.replace_folder`): a failure or an interrupt leaves ``models_dir`` as it was.
    Returns the manifest written."""
    return replace_folder(models_dir, lambda copy: _ship_cells_into(members, train, val, copy, data, convert))


def _ship_cells_into(members: dict[str, tuple[TrainResult, TrainConfig]], train: CellBags, val: CellBags,
                     models_dir: Path, data: str, convert: bool) -> Manifest:
    """:func:`ship_cells`'s steps, each writing in place in ``models_dir``."""
    folder = Path(models_dir) / CELLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (result, config) in members.items():
        spec = CELL_REGISTRY[name]
        target = folder / f"{name}.keras"
        save_half_precision(keras.models.load_model(result.best_path, compile=False), target)
        entries[name] = ModelEntry(
            name, target.name, sha256_file(target), config.input_size, spec.preprocessing, spec.architecture,
            training={"data": data, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                      "seconds": round(result.seconds, 1), "config": _plain(asdict(config)), "recipe": RECIPE,
                      "augmentation": AUGMENTATION_RECIPE, "round_one": _round_one(result)})
    save_manifest(Manifest(entries, EnsembleConfig(equal_weights(entries)), dataset=DATASET), folder)
    return fit_cells(models_dir, train, val, convert)


def fit_cells(models_dir: Path, train: CellBags, val: CellBags, convert: bool = True) -> Manifest:
    """With ``convert``, convert each member of ``models_dir/cells`` to OpenVINO, int8 or bfloat16 where that
    keeps its answers on ``val`` (int8 calibrated on ``train``'s cells; see :mod:`allscan.training.convert`);
    then fit and record the calibration, threshold and review rule on ``val``'s cells, from the outputs of
    the runtime that scores by default. Returns the manifest written."""
    folder = Path(models_dir) / CELLS_DIR
    manifest = load_manifest(folder)
    entries = dict(manifest.models)
    (folder / RULE_NAME).unlink(missing_ok=True)
    if convert:
        calibration_crops = train.crops[calibration_sample(len(train.field))]
        for name, entry in manifest.models.items():
            converted = convert_member(folder, entry, val.crops, val.cell_labels, calibration_crops)
            entries[name] = replace(entry, openvino=converted)
        save_manifest(replace(manifest, models=dict(entries)), folder)
    classifier = CellClassifier.load(models_dir)
    _, raw, _ = classifier.probabilities(val.crops)
    keep, labels = refined_labels(val, np.mean(list(raw.values()), axis=0))
    members_platt = {n: fit_platt(labels[keep], p[keep]) for n, p in raw.items()}
    calibrated = {n: members_platt[n].apply(p) for n, p in raw.items()}
    weights = equal_weights(entries)
    mean = weighted_mean(calibrated, weights)
    ensemble_platt = fit_platt(labels[keep], mean[keep])
    p_blast = ensemble_platt.apply(mean)
    threshold = cell_threshold(p_blast, val.cell_labels == 0)
    described = f"val split ({len(val.paths)} fields, {len(val.field)} cells)"
    calibration = Calibration(members_platt, ensemble_platt, "Platt on round two's labels of the val cells")
    validation = field_figures(p_blast, val.field, val.labels, threshold).to_dict()
    for name, p in calibrated.items():
        entries[name] = replace(entries[name], validation=field_figures(p, val.field, val.labels, threshold).to_dict())
    manifest = replace(manifest, models=entries,
                       ensemble=EnsembleConfig(weights, threshold, (threshold, threshold), described, calibration))
    save_manifest(manifest, folder)
    rule = fit_rule(p_blast, val.field, val.labels, described)
    atomic_write_text(folder / RULE_NAME, json.dumps(asdict(rule) | {"validation": validation}, indent=2) + "\n")
    return manifest


def _round_one(result: TrainResult) -> dict:
    """Round one's record, from its run folder beside round two's (see :func:`train_member`)."""
    weak, config = load_run(Path(result.best_path).parent.parent / "weak")
    return {"epochs": weak.epochs_run, "best_epoch": weak.best_epoch, "seconds": round(weak.seconds, 1),
            "learning_rate": config.learning_rate}


def _plain(values: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def train_cell_classifier(data_dir: Path, models_dir: Path, runs_dir: Path, names: tuple[str, ...],
                          config: Callable[[ModelSpec], TrainConfig], refine_epochs: int, resume: bool = False,
                          report: Callable[[str, str, EpochLog], None] = lambda name, stage, entry: None) -> Manifest:
    """Find and crop the cells of ``data_dir/train`` and ``data_dir/val`` (label box blanked), train each
    member in ``names`` (:func:`allscan.training.cell_train.train_member`, checkpoints in
    ``runs_dir/cells/<name>``), then :func:`ship_cells` into ``models_dir``."""
    box = config(CELL_REGISTRY[names[0]]).blank_box
    train, val = _bags(data_dir, models_dir, box)
    members = {}
    for name in names:
        spec = CELL_REGISTRY[name]
        settings = config(spec)
        result = train_member(spec, train, val, Path(runs_dir) / "cells" / name, settings, refine_epochs, resume,
                              lambda stage, entry, name=name: report(name, stage, entry))
        members[name] = (result, settings)
    return ship_cells(members, train, val, models_dir, str(data_dir))


def reconvert_cells(data_dir: Path, models_dir: Path, box: tuple[int, int, int, int] | None) -> Manifest:
    """Convert the shipped cell classifier again and refit what it derives from its outputs (:func:`fit_cells`),
    on the cells of ``data_dir/train`` and ``data_dir/val`` (``box`` blanked)."""
    train, val = _bags(data_dir, models_dir, box)
    return fit_cells(models_dir, train, val)


def _bags(data_dir: Path, models_dir: Path, box: tuple[int, int, int, int] | None) -> tuple[CellBags, CellBags]:
    """The cells of the training and validation splits as predict finds them (crowded single fields measured
    at their red cells), at the domain reference's red-cell size where a field's own cannot be estimated."""
    reference = DomainReference.for_models(models_dir, load_or_empty(models_dir))
    checks = reference.checks if reference is not None else None
    diameter = checks.rbc_diameter if checks is not None else DEFAULT_RBC_DIAMETER
    return (load_cell_bags(Path(data_dir) / "train", box, diameter, checks=checks),
            load_cell_bags(Path(data_dir) / "val", box, diameter, checks=checks))
