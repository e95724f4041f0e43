"""Classification figures for ALL (positive class) versus normal."""

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    """Figures for one model or the ensemble on one labelled set.

    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` with ALL as the positive class;
    ``review`` counts images flagged for review (ensemble only, else 0).
    """

    n: int
    accuracy: float
    precision: float
    recall: float
    specificity: float
    f1: float
    balanced_accuracy: float
    roc_auc: float
    confusion_matrix: list[list[int]]
    review: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def compute_metrics(labels, probabilities, threshold: float = 0.5, review=None) -> Metrics:
    """Metrics of probabilities of ALL against labels (1 = ALL) at ``threshold``."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return Metrics(
        n=int(len(labels)),
        accuracy=_ratio(tp + tn, len(labels)),
        precision=precision,
        recall=recall,
        specificity=specificity,
        f1=_ratio(2 * precision * recall, precision + recall),
        balanced_accuracy=(recall + specificity) / 2.0,
        roc_auc=roc_auc(labels, probabilities),
        confusion_matrix=[[tn, fp], [fn, tp]],
        review=int(np.asarray(review).sum()) if review is not None else 0,
    )
