"""Calibrated probabilities: Platt scaling of each member and of the ensemble.

A Platt scaling maps a probability ``p`` to ``sigmoid(slope * logit(p) + intercept)``
(Platt 1999); temperature scaling is the special case ``intercept = 0``. Applying it
needs numpy only; fitting it (:func:`fit_platt`) uses scikit-learn, which lives in
the ``train`` extra.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-7

PLATT_C = 1.0
"""Inverse L2 strength of the Platt fit (scikit-learn's default). On a validation split
that a model separates perfectly, an unregularised fit has no finite optimum: its slope
would grow without bound and every probability become 0 or 1."""


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class Platt:
    """``p ↦ sigmoid(slope · logit(p) + intercept)``; the identity by default."""

    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, p):
        """Calibrated probabilities, same shape as ``p`` (a float for a float); the identity returns ``p``."""
        if self == Platt():
            return p
        out = sigmoid(self.slope * logit(p) + self.intercept)
        return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class Calibration:
    """How raw member outputs become calibrated probabilities.

    Attributes:
        members: Platt scaling of each member's output (a member without one is left as is).
        ensemble: Platt scaling of the weighted mean of the calibrated member probabilities.
        method: How it was fitted, in words (part of the manifest and its digest).
    """

    members: dict[str, Platt] = field(default_factory=dict)
    ensemble: Platt = field(default_factory=Platt)
    method: str = ""

    def member(self, name: str, p):
        return self.members.get(name, Platt()).apply(p)

    def members_all(self, probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.member(name, p) for name, p in probs.items()}

    def to_dict(self) -> dict:
        return {"method": self.method, "members": {n: vars(p).copy() for n, p in self.members.items()},
                "ensemble": vars(self.ensemble).copy()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        """Read :meth:`to_dict`'s form.

        Raises:
            KeyError, TypeError, ValueError: A missing or non-numeric entry, or a slope or intercept
                that is not finite.
        """
        return cls({n: _platt(p) for n, p in data.get("members", {}).items()}, _platt(data["ensemble"]),
                   str(data.get("method", "")))


def _platt(data: Mapping) -> Platt:
    slope, intercept = float(data["slope"]), float(data["intercept"])
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise ValueError(f"a Platt scaling needs finite numbers, got slope {slope}, intercept {intercept}")
    return Platt(slope, intercept)


def fit_platt(labels, p, c: float = PLATT_C) -> Platt:
    """Fit a Platt scaling of probabilities ``p`` to labels (1 = ALL) by L2-regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("Platt scaling needs both classes in the calibration data")
    model = LogisticRegression(C=c).fit(logit(p).reshape(-1, 1), labels)
    return Platt(float(model.coef_[0, 0]), float(model.intercept_[0]))


def weighted_mean(probs: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted mean over the members that carry weight; the plain mean when none does."""
    total = sum(weights.get(name, 0.0) for name in probs)
    if total <= 0:
        return np.mean([np.asarray(p, dtype=np.float64) for p in probs.values()], axis=0)
    return sum(weights.get(name, 0.0) * np.asarray(p, dtype=np.float64) for name, p in probs.items()) / total
