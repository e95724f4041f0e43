"""How well the cell classifier finds blasts, measured on labelled fields (weak labels) and on labelled
cells from another lab.

With field labels only, the figures are field-level: an ALL field should hold at least one cell
called blast, a benign field (hematogones, normal lymphocytes) should hold few; and the highest
p(blast) of a field's cells should rank ALL fields above benign ones (ROC AUC). Every rate comes
with its 95% Wilson interval.
"""

from dataclasses import asdict, dataclass

import numpy as np

from allscan.training.metrics import roc_auc
from allscan.training.operating_point import wilson_interval


def _rate(successes: int, n: int) -> dict:
    low, high = wilson_interval(successes, n)
    return {"count": int(successes), "n": int(n), "rate": successes / n if n else None, "ci95": [low, high]}


@dataclass(frozen=True)
class FieldCellFigures:
    """Cell-classifier figures on labelled fields.

    Attributes:
        threshold: p(blast) at or above which a cell is called a blast.
        all_fields_with_blast: ALL fields holding at least one cell called blast (count, n, rate, ci95).
        benign_cells_called_blast: Cells of benign fields called blast.
        benign_fields_with_blast: Benign fields holding at least one cell called blast.
        top_p_auc: ROC AUC, ALL vs benign fields, of each field's highest p(blast) (fields without
            cells score 0).
        cells_per_field: Mean cells found per field, ALL and benign.
    """

    threshold: float
    all_fields_with_blast: dict
    benign_cells_called_blast: dict
    benign_fields_with_blast: dict
    top_p_auc: float
    cells_per_field: dict

    def to_dict(self) -> dict:
        return asdict(self)


def top_per_field(p: np.ndarray, field: np.ndarray, n_fields: int) -> np.ndarray:
    """Each field's highest cell p(blast), 0 for a field without cells."""
    top = np.zeros(n_fields)
    np.maximum.at(top, field, p)
    return top


def field_figures(p: np.ndarray, field: np.ndarray, labels: np.ndarray, threshold: float) -> FieldCellFigures:
    """Figures for cells ``p`` (``(n_cells,)``) of fields ``field`` (index per cell) labelled ``labels``."""
    n_fields = len(labels)
    called = p >= threshold
    blasts = np.bincount(field, weights=called.astype(float), minlength=n_fields)
    counts = np.bincount(field, minlength=n_fields)
    is_all = labels == 1
    benign_cells = ~is_all[field]
    return FieldCellFigures(
        threshold,
        _rate(int((blasts[is_all] > 0).sum()), int(is_all.sum())),
        _rate(int(called[benign_cells].sum()), int(benign_cells.sum())),
        _rate(int((blasts[~is_all] > 0).sum()), int((~is_all).sum())),
        roc_auc(labels, top_per_field(p, field, n_fields)),
        {"ALL": float(counts[is_all].mean()) if is_all.any() else None,
         "benign": float(counts[~is_all].mean()) if (~is_all).any() else None},
    )


def class_rates(p: np.ndarray, classes: np.ndarray, threshold: float) -> dict:
    """Share of cells called blast per class name (and ``all``), each with its 95% interval."""
    called = p >= threshold
    rates = {name: _rate(int(called[classes == name].sum()), int((classes == name).sum()))
             for name in sorted(set(classes.tolist()))}
    rates["all"] = _rate(int(called.sum()), len(called))
    return rates
