"""Choosing the ensemble's calibration, weights, screening threshold and review band on held-out data."""

import itertools
from dataclasses import dataclass

import numpy as np

from allscan.models.calibration import Calibration, fit_platt, weighted_mean
from allscan.models.manifest import EnsembleConfig
from allscan.training.metrics import compute_metrics
from allscan.training.operating_point import OperatingPoint, review_band, screening_threshold

MEMBER_MIN_BALANCED_ACCURACY = 0.95
"""A model joins the vote when its validation balanced accuracy (at 0.5) reaches this."""
WEIGHT_STEP = 0.1
REVIEW_ERROR_SHARE = 0.8
"""A band fitted to errors (site profiles, :mod:`allscan.training.adapt`) widens until it holds this share of
validation errors…"""
REVIEW_MAX_FLAGGED = 0.15
"""…or until it would flag more than this share of validation images."""
CALIBRATION_METHOD = (
    "Platt scaling (L2-regularised logistic regression on the logit, C=1) of each member, then of the"
    " weighted mean of the calibrated members"
)


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
        loss = balanced_log_loss(labels, weighted_mean(probs, weights))
        if loss < best_loss - 1e-12:
            best, best_loss = weights, loss
    return {n: float(best.get(n, 0.0)) for n in names}


def tune_threshold(labels: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the best balanced accuracy (site profiles); the middle of the best run of thresholds."""
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


@dataclass(frozen=True)
class Tuning:
    """The ensemble settings chosen and the operating point they reach on the tuning data."""

    config: EnsembleConfig
    operating_point: OperatingPoint
    """The threshold and its recall on the data that bound it (validation, or validation and pool)."""
    flagged: float
    """Share of the validation images the review band flags."""


def tune_ensemble(probs: dict[str, np.ndarray], labels: np.ndarray, tuned_on: str,
                  pool: tuple[dict[str, np.ndarray], np.ndarray] | None = None) -> Tuning:
    """Calibration, weights, screening threshold and review band from held-out predictions.

    1. Each member gets a Platt scaling (:func:`fit_platt`), fitted on ``probs`` (validation) or,
       with ``pool`` (e.g. training-split predictions), on validation and pool together.
    2. Weights: equal for the members whose (raw) validation balanced accuracy reaches 0.95
       (:func:`member_weights`).
    3. The weighted mean of the calibrated members gets its own Platt scaling, fitted on the same data.
    4. The threshold: the highest whose recall lower 95% bound stays at or above 99%
       (:func:`screening_threshold`) on validation and, with ``pool``, also on validation and pool
       together: the lower of the two, so that sensitivity never rests on the easier set alone.
    5. The review band: where the calibrated probability gives the other verdict 5% or more (:func:`review_band`).
    """
    fit_probs, fit_labels = probs, np.asarray(labels)
    if pool is not None:
        fit_probs = {name: np.concatenate([probs[name], pool[0][name]]) for name in probs}
        fit_labels = np.concatenate([fit_labels, pool[1]])
    members = {name: fit_platt(fit_labels, p) for name, p in sorted(fit_probs.items())}
    weights = member_weights(probs, labels)

    def mean(source: dict[str, np.ndarray]) -> np.ndarray:
        return weighted_mean({name: members[name].apply(p) for name, p in source.items()}, weights)

    ensemble = fit_platt(fit_labels, mean(fit_probs))
    p = ensemble.apply(mean(probs))
    point = screening_threshold(labels, p)
    if pool is not None:
        point = min(point, screening_threshold(fit_labels, ensemble.apply(mean(fit_probs))),
                    key=lambda candidate: candidate.threshold)
    band = review_band(point.threshold)
    method = CALIBRATION_METHOD + (", fitted on validation and pooled predictions" if pool is not None
                                   else ", fitted on validation")
    flagged = float(((p >= band[0]) & (p < band[1])).mean())
    return Tuning(EnsembleConfig(weights, point.threshold, band, tuned_on, Calibration(members, ensemble, method)),
                  point, flagged)
