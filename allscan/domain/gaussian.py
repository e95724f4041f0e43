"""A fitted Gaussian in (optionally PCA-reduced) feature space, and the Mahalanobis distance to it.

Fitting uses scikit-learn (PCA, Ledoit-Wolf shrinkage covariance, which stays well
conditioned with few samples); applying it needs only numpy, and it is stored as plain
arrays (npz), never pickled.
"""

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    """Standardise, optionally project, then measure Mahalanobis distance.

    Attributes:
        center: Per-feature mean used to standardise, ``(d,)``.
        spread: Per-feature standard deviation used to standardise, ``(d,)``.
        projection: PCA components ``(k, d)``, or an empty array for none.
        location: Mean in the projected space, ``(k,)``.
        precision: Inverse covariance in the projected space, ``(k, k)``.
        threshold: Distance above which a sample is outside the fitted distribution.
    """

    center: np.ndarray
    spread: np.ndarray
    projection: np.ndarray
    location: np.ndarray
    precision: np.ndarray
    threshold: float

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` (``(n, d)``) to the fitted distribution."""
        z = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.center) / self.spread
        if self.projection.size:
            z = z @ self.projection.T
        diff = z - self.location
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, self.precision, diff), 0.0))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Its arrays under ``prefix``-ed names, for an npz file."""
        return {f"{prefix}_{name}": np.asarray(getattr(self, name)) for name in
                ("center", "spread", "projection", "location", "precision")} | {
            f"{prefix}_threshold": np.asarray(self.threshold)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "Gaussian":
        get = lambda name: np.asarray(arrays[f"{prefix}_{name}"], dtype=np.float64)  # noqa: E731
        return cls(get("center"), get("spread"), get("projection"), get("location"), get("precision"),
                   float(get("threshold")))


def fit_gaussian(samples: np.ndarray, held_out: np.ndarray | None = None, components: int = 0,
                 quantile: float = 0.99, margin: float = 1.0, groups: np.ndarray | None = None,
                 folds: int = 5) -> Gaussian:
    """Fit on ``samples`` (``(n, d)``) and set the threshold honestly.

    The threshold is ``margin`` times the ``quantile`` of the distances of ``held_out`` rows,
    or, when none are given, of each row's distance to a model fitted without its fold
    (``folds`` folds that keep each of ``groups`` together, e.g. the fields of one image).

    Args:
        samples: Training rows.
        held_out: Rows not used for fitting.
        components: PCA dimensions (0 keeps the standardised features as they are).
        quantile: Quantile of the held-out distances used as threshold.
        margin: Factor applied to that quantile.
        groups: Group of each row, kept within one fold.
        folds: Number of folds when ``held_out`` is None.
    """
    fitted = _fit(np.asarray(samples, dtype=np.float64), components)
    if held_out is not None:
        reference = fitted.distance(held_out)
    else:
        reference = _cross_fitted_distances(np.asarray(samples, dtype=np.float64), components, groups, folds)
    return replace(fitted, threshold=float(margin * np.quantile(reference, quantile)))


def _fit(samples: np.ndarray, components: int) -> Gaussian:
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    center = samples.mean(axis=0)
    spread = np.maximum(samples.std(axis=0), 1e-6)
    z = (samples - center) / spread
    projection = np.zeros((0,))
    if components:
        k = max(1, min(components, z.shape[0] - 1, z.shape[1]))
        projection = PCA(k, random_state=0).fit(z).components_
        z = z @ projection.T
    covariance = LedoitWolf().fit(z)
    return Gaussian(center, spread, projection, covariance.location_, covariance.precision_, float("inf"))


def _cross_fitted_distances(samples: np.ndarray, components: int, groups: np.ndarray | None,
                            folds: int) -> np.ndarray:
    groups = np.arange(len(samples)) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(np.random.default_rng(0).permutation(unique))}
    fold = np.array([fold_of[g] for g in groups])
    distances = np.empty(len(samples))
    for k in range(min(folds, len(unique))):
        test = fold == k
        distances[test] = _fit(samples[~test], components).distance(samples[test])
    return distances
