"""The screening operating point: a threshold chosen for sensitivity first, and a review band.

A missed ALL costs far more than a field sent to review, so the threshold is the
highest one whose recall on the calibration data, taken as the lower end of its
95% Wilson interval, still reaches the target (99%). It is placed halfway (in logit
space) between the lowest-scoring ALL field it still catches and the next lower
score, rather than on that field's score, so that a field scoring a hair lower
elsewhere is not missed by construction.
"""

import math
from dataclasses import dataclass

import numpy as np

from allscan.models.calibration import logit, sigmoid

TARGET_RECALL = 0.99
Z_95 = 1.959963984540054
REVIEW_RISK = 0.05
"""An image goes to review when its calibrated probability gives the other verdict this chance or more."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927); ``(0, 1)`` when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding must not exclude phat
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen by :func:`screening_threshold` and what it achieves on the data it was chosen on.

    Attributes:
        threshold: Probability at or above which the verdict is ALL.
        recall: Recall at the threshold.
        recall_lower: Lower end of the recall's 95% Wilson interval.
        target: The recall lower bound aimed for.
        target_met: Whether ``recall_lower`` reaches ``target``; when no threshold can (too few
            ALL fields), the threshold catches every ALL field and this is False.
    """

    threshold: float
    recall: float
    recall_lower: float
    target: float
    target_met: bool


def _below(scores: np.ndarray, value: float) -> float | None:
    lower = scores[scores < value]
    return float(lower.max()) if len(lower) else None


def screening_threshold(labels, p, target: float = TARGET_RECALL) -> OperatingPoint:
    """The highest threshold whose recall lower 95% bound is at least ``target``.

    Raises:
        ValueError: No ALL field in ``labels``.
    """
    labels = np.asarray(labels).astype(int)
    p = np.asarray(p, dtype=np.float64)
    positives = np.sort(p[labels == 1])[::-1]
    n = len(positives)
    if n == 0:
        raise ValueError("choosing a screening threshold needs ALL fields")
    caught = n
    for k in range(1, n + 1):  # catching the k highest-scoring ALL fields
        if wilson_interval(k, n)[0] >= target:
            caught = k
            break
    met = wilson_interval(caught, n)[0] >= target
    lowest_caught = positives[caught - 1]
    next_lower = _below(p, lowest_caught)
    if next_lower is None:
        threshold = float(lowest_caught)
    else:
        threshold = float(sigmoid((logit(lowest_caught) + logit(next_lower)) / 2))
        if not next_lower < threshold <= lowest_caught:  # scores too close for the midpoint in floating point
            threshold = float(lowest_caught)
    recall = float((p[labels == 1] >= threshold).mean())
    achieved = int((p[labels == 1] >= threshold).sum())
    return OperatingPoint(threshold, recall, wilson_interval(achieved, n)[0], target, met)


def review_band(threshold: float, risk: float = REVIEW_RISK) -> tuple[float, float]:
    """``(low, high)``: calibrated probabilities whose verdict has at least ``risk`` chance of being wrong.

    A normal verdict (``p < threshold``) is reviewed when ``p ≥ risk``; an ALL verdict when
    ``1 - p ≥ risk``. The band always holds the threshold.
    """
    return min(risk, threshold), max(1.0 - risk, threshold)
