"""Training a cell-classifier member from field labels: multiple-instance learning in two rounds.

Round one (``weak``) labels every cell with its field's label: an ALL field's cells are mostly blasts,
a benign field's are hematogones and normal white cells. Round two (``mil``) keeps as positives only
the top-scoring share of each ALL field's cells by round one's model (the likely blasts; the rest of
an ALL field's cells, e.g. a neutrophil among blasts, are left out), keeps every benign cell as a
negative, and fine-tunes round one's model on those. Both rounds use the field models' recipe:
the same augmentation (flips, rotations, ±25% scale, HED stain jitter), schedule, batch-norm
re-estimation and best epoch by validation loss (:func:`allscan.training.train.fit`).
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from allscan._tf import keras
from allscan.models.registry import ModelSpec
from allscan.training.cell_data import CellBags
from allscan.training.train import EpochLog, TrainConfig, TrainResult, fit

MIL_TOP = 0.5
"""Share of an ALL field's cells (the top-scoring ones, at least one) kept as positives in round two."""
REFINE_RATE = 0.3
"""Round two's peak learning rate, as a share of round one's: it fine-tunes, it does not start over."""


def crop_probabilities(model, spec: ModelSpec, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """A member's p(blast) for uint8 crops ``(n, s, s, 3)``, ``(n,)``."""
    if len(crops) == 0:
        return np.zeros(0)
    out = [model.predict_on_batch(spec.preprocess(crops[i:i + batch_size].astype(np.float32)))
           for i in range(0, len(crops), batch_size)]
    return np.concatenate([np.asarray(o).reshape(-1) for o in out])


def refined_labels(bags: CellBags, p: np.ndarray, top: float = MIL_TOP) -> tuple[np.ndarray, np.ndarray]:
    """Round two's cells and labels: ``(keep, labels)``, both ``(n_cells,)``.

    Every cell of a benign field is kept as a negative; of an ALL field's cells, the top ``top``
    share by ``p`` (at least one) is kept as positives, the rest left out.
    """
    keep = bags.cell_labels == 0
    for field in np.nonzero(bags.labels == 1)[0]:
        cells = np.nonzero(bags.field == field)[0]
        if len(cells) == 0:
            continue
        count = max(1, int(np.ceil(top * len(cells))))
        keep[cells[np.argsort(-p[cells], kind="stable")[:count]]] = True
    return keep, bags.cell_labels.copy()


def train_member(spec: ModelSpec, train_bags: CellBags, val_bags: CellBags, run_dir: Path, config: TrainConfig,
                 refine_epochs: int, resume: bool = False,
                 report: Callable[[str, EpochLog], None] = lambda stage, entry: None) -> TrainResult:
    """Both rounds for one member; checkpoints in ``run_dir/weak`` and ``run_dir/mil`` (each resumable).

    Returns:
        Round two's result: its best checkpoint is the member to ship.
    """
    run_dir = Path(run_dir)
    weak = fit(spec, train_bags.instances(), val_bags.instances(), run_dir / "weak", config, resume,
               report=lambda entry: report("weak", entry))
    model = keras.models.load_model(weak.best_path, compile=False)
    train_keep, train_labels = refined_labels(train_bags, crop_probabilities(model, spec, train_bags.crops))
    val_keep, val_labels = refined_labels(val_bags, crop_probabilities(model, spec, val_bags.crops))
    refine = replace(config, epochs=refine_epochs, learning_rate=config.learning_rate * REFINE_RATE,
                     weights=weak.best_path)
    return fit(spec, train_bags.instances(train_keep, train_labels), val_bags.instances(val_keep, val_labels),
               run_dir / "mil", refine, resume, report=lambda entry: report("mil", entry))
