"""Choosing the ensemble's weights, threshold and review band on validation data."""

import itertools

import numpy as np

from allscan.manifest import EnsembleConfig
from allscan.metrics import compute_metrics

MEMBER_MIN_BALANCED_ACCURACY = 0.95
"""A model joins the vote when its validation balanced accuracy (at 0.5) reaches this."""
WEIGHT_STEP = 0.1
REVIEW_ERROR_SHARE = 0.8
"""The review band widens until it holds this share of validation errors…"""
REVIEW_MAX_FLAGGED = 0.15
"""…or until it would flag more than this share of validation images."""


def weighted(probs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = sum(weights.values())
    return sum(weights[name] * probs[name] for name in weights) / total


def balanced_log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    """Log loss with both classes weighted equally (normal fields are the minority)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    pos, neg = labels == 1, labels == 0
    return float(-(np.log(p[pos]).mean() + np.log(1 - p[neg]).mean()) / 2)


def tune_weights(probs: dict[str, np.ndarray], labels: np.ndarray, step: float = WEIGHT_STEP) -> dict[str, float]:
    """Grid search over the weight simplex for the lowest class-balanced log loss."""
    names = sorted(probs)
    units = int(round(1 / step))
    best, best_loss = None, float("inf")
    for combo in itertools.product(range(units + 1), repeat=len(names)):
        if sum(combo) != units:
            continue
        weights = {n: c / units for n, c in zip(names, combo) if c}
        loss = balanced_log_loss(labels, weighted(probs, weights))
        if loss < best_loss - 1e-12:
            best, best_loss = weights, loss
    return {n: float(best.get(n, 0.0)) for n in names}


def tune_threshold(labels: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the best balanced accuracy; the middle of the best run of thresholds."""
    candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = np.array([compute_metrics(labels, p, t).balanced_accuracy for t in candidates])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    longest = max(runs, key=len)
    return float(candidates[longest[len(longest) // 2]])


def tune_review_band(labels: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """A band around the threshold holding most validation errors while flagging few images."""
    wrong = (p >= threshold) != (labels == 1)
    band = (threshold, threshold)
    for half in np.arange(0.01, 0.5, 0.01):
        low, high = max(0.0, threshold - half), min(1.0, threshold + half)
        inside = (p >= low) & (p < high)
        if inside.mean() > REVIEW_MAX_FLAGGED:
            break
        band = (round(float(low), 3), round(float(high), 3))
        if not wrong.any() or (wrong & inside).sum() >= REVIEW_ERROR_SHARE * wrong.sum():
            break
    return band


def member_weights(probs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Equal weights for every model with validation balanced accuracy ≥ 0.95, zero for the others.

    On a validation split that the good models separate almost perfectly, a fitted weight
    search (:func:`tune_weights`) puts all the weight on one model, which is no ensemble
    and no more robust than that model; averaging the competent members is.
    """
    competent = [n for n in sorted(probs)
                 if compute_metrics(labels, probs[n], 0.5).balanced_accuracy >= MEMBER_MIN_BALANCED_ACCURACY]
    if not competent:
        return tune_weights(probs, labels)
    return {n: (1.0 / len(competent) if n in competent else 0.0) for n in sorted(probs)}


def tune_ensemble(probs: dict[str, np.ndarray], labels: np.ndarray, tuned_on: str) -> EnsembleConfig:
    """Weights, threshold and review band, all from validation predictions."""
    weights = member_weights(probs, labels)
    p = weighted(probs, {n: w for n, w in weights.items() if w})
    threshold = tune_threshold(labels, p)
    return EnsembleConfig(weights, threshold, tune_review_band(labels, p, threshold), tuned_on)
