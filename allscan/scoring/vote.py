"""From model outputs to an image's verdict: the field aggregation rule, the calibrated weighted soft
vote, the screening threshold and the review rule, in one place."""

from collections.abc import Mapping

import numpy as np

from allscan.models.calibration import weighted_mean
from allscan.models.manifest import EnsembleConfig
from allscan.results.types import VERDICT_ALL, VERDICT_NORMAL, Score

TOP_K = 3
"""An image's probabilities are the mean over its ``TOP_K`` fields with the highest ensemble p(ALL)."""


def top_fields(per_model: dict[str, np.ndarray], weights: dict[str, float], k: int = TOP_K) -> np.ndarray:
    """Indices of the ``k`` fields with the highest weighted ensemble p(ALL), highest first: the fields whose
    probabilities make the image's (:func:`aggregate`)."""
    return np.argsort(-np.asarray(weighted_mean(per_model, weights)), kind="stable")[: max(1, k)]


def aggregate(per_model: dict[str, np.ndarray], weights: dict[str, float], k: int = TOP_K) -> dict[str, float]:
    """An image's per-model probabilities from its fields' (``{model: (n_fields,)}``).

    The rule: rank fields by the weighted ensemble p(ALL) and average each model's
    probability over the top ``k``. ALL is present when blasts are present in some
    fields, so the most suspicious fields speak for the image; averaging a few of them
    keeps one odd field from deciding alone.
    """
    chosen = top_fields(per_model, weights, k)
    return {n: float(np.mean(p[chosen])) for n, p in per_model.items()}


def combine(per_model: Mapping[str, float], config: EnsembleConfig) -> Score:
    """Calibrate, take the weighted soft vote, calibrate it; verdict by threshold, review when uncertain.

    Each member's output goes through its Platt scaling, the weighted mean of those
    calibrated probabilities through the ensemble's; the per-model probabilities
    reported are the calibrated ones. ``agreement`` counts every model's vote;
    disagreement (for review) is among the models that carry weight, so a member tuned
    out of the vote cannot flag images on its own.
    """
    calibrated = {name: float(config.calibration.member(name, p)) for name, p in per_model.items()}
    p_all = float(config.calibration.ensemble.apply(weighted_mean(calibrated, config.weights)))
    votes = [p >= config.threshold for p in calibrated.values()]
    agreement = int(sum(votes))
    low, high = config.review_band
    weighted_votes = [v for name, v in zip(calibrated, votes) if config.weights.get(name, 0.0) > 0] or votes
    disagree = 0 < sum(weighted_votes) < len(weighted_votes)
    review = bool(low <= p_all < high or disagree)
    verdict = VERDICT_ALL if p_all >= config.threshold else VERDICT_NORMAL
    return Score(p_all, verdict, review, agreement, calibrated)
