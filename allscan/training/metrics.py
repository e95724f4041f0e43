"""Classification figures for ALL (positive class) versus normal, each with a 95% interval.

Metrics and curves come from scikit-learn (the ``train`` extra). Proportions (accuracy,
precision, recall, specificity) get Wilson score intervals; F1, balanced accuracy, ROC
AUC, the Brier score and the expected calibration error get percentile bootstrap
intervals over images.

A figure without a denominator (specificity on a split without normal images; recall and F1
on one without ALL images; balanced accuracy and ROC AUC on either) is undefined: NaN here,
``null`` in :meth:`Metrics.to_dict`, never a number that would read as a real result.
"""

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from allscan.training.operating_point import wilson_interval

ECE_BINS = 10
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Metrics:
    """Figures for one model or the ensemble on one labelled set.

    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` with ALL as the positive class;
    ``review`` counts images flagged for review (ensemble only, else 0); ``brier`` and
    ``ece`` (expected calibration error, 10 equal-width bins of p(ALL)) measure how far
    the probabilities are from the observed frequencies; ``intervals`` maps a figure's
    name to its 95% interval ``[low, high]`` (empty when not computed). Undefined figures and
    intervals are NaN.
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
    brier: float = float("nan")
    ece: float = float("nan")
    intervals: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The figures as strict JSON takes them: undefined ones as None."""
        return undefined_as_none(asdict(self))


def undefined_as_none(data):
    """``data`` (dicts, lists, numbers) with every NaN or infinite float replaced by None (JSON ``null``)."""
    if isinstance(data, dict):
        return {key: undefined_as_none(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [undefined_as_none(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _ratio(num: float, den: float) -> float:
    """``num / den``; NaN (undefined) when ``den`` is 0."""
    return float(num / den) if den else float("nan")


def _precision(tp: int, fp: int, fn: int) -> float:
    """With no ALL verdicts, 0 when the set holds ALL images (each one missed, as scikit-learn's
    ``zero_division=0`` counts it) and undefined when it holds none."""
    return _ratio(tp, tp + fp) if tp + fp else (0.0 if fn else float("nan"))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN with one class only."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def expected_calibration_error(labels, probabilities, bins: int = ECE_BINS) -> float:
    """Σ over equal-width bins of p(ALL): (share of images in the bin) × |mean p − share of ALL|."""
    labels = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - labels[inside].mean())
    return float(total)


def brier_score(labels, probabilities) -> float:
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(labels).astype(int), np.asarray(probabilities, dtype=np.float64)))


def _counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    from sklearn.metrics import confusion_matrix

    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1])
    return int(tn), int(fp), int(fn), int(tp)


def _f1(tp: int, fp: int, fn: int) -> float:
    """Undefined, as recall is, when the set holds no ALL images."""
    return _ratio(2 * tp, 2 * tp + fp + fn) if tp + fn else float("nan")


def _balanced(tp: int, fp: int, fn: int, tn: int) -> float:
    return (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2.0


def _bootstrap(labels: np.ndarray, p: np.ndarray, predicted: np.ndarray, resamples: int) -> dict[str, list[float]]:
    """Percentile 95% intervals of the figures that are not simple proportions, resampling images."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n = len(labels)
    samples: dict[str, list[float]] = {"f1": [], "balanced_accuracy": [], "roc_auc": [], "brier": [], "ece": []}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        y, q, hat = labels[idx], p[idx], predicted[idx]
        tp = int(((hat == 1) & (y == 1)).sum())
        fp = int(((hat == 1) & (y == 0)).sum())
        fn = int(((hat == 0) & (y == 1)).sum())
        tn = n - tp - fp - fn
        samples["f1"].append(_f1(tp, fp, fn))
        samples["balanced_accuracy"].append(_balanced(tp, fp, fn, tn))
        samples["roc_auc"].append(roc_auc(y, q))
        samples["brier"].append(float(np.mean((q - y) ** 2)))
        samples["ece"].append(expected_calibration_error(y, q))
    return {name: _percentile_interval(v) for name, v in samples.items()}


def _percentile_interval(values: list[float]) -> list[float]:
    """The 2.5th and 97.5th percentiles of the resamples where the figure is defined (NaN if none)."""
    defined = np.asarray(values)[np.isfinite(values)]
    if not len(defined):
        return [float("nan"), float("nan")]
    return [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))]


def compute_metrics(labels, probabilities, threshold: float = 0.5, review=None,
                    intervals: bool = False, resamples: int = BOOTSTRAP_RESAMPLES) -> Metrics:
    """Metrics of probabilities of ALL against labels (1 = ALL) at ``threshold``, with 95% intervals if asked."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = _counts(labels, predicted)
    n = int(len(labels))
    bounds: dict[str, list[float]] = {}
    if intervals and n:
        for name, (k, m) in {"accuracy": (tp + tn, n), "precision": (tp, tp + fp), "recall": (tp, tp + fn),
                             "specificity": (tn, tn + fp)}.items():
            bounds[name] = list(wilson_interval(k, m)) if m else [float("nan"), float("nan")]
        bounds |= _bootstrap(labels, probabilities, predicted, resamples)
    return Metrics(
        n=n,
        accuracy=_ratio(tp + tn, n),
        precision=_precision(tp, fp, fn),
        recall=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        f1=_f1(tp, fp, fn),
        balanced_accuracy=_balanced(tp, fp, fn, tn),
        roc_auc=roc_auc(labels, probabilities),
        confusion_matrix=[[tn, fp], [fn, tp]],
        review=int(np.asarray(review).sum()) if review is not None else 0,
        brier=brier_score(labels, probabilities) if n else float("nan"),
        ece=expected_calibration_error(labels, probabilities),
        intervals=bounds,
    )
