"""Site profiles: a lab's own light heads on the models' features, its operating point and its domain.

A profile is a folder holding ``profile.json`` (figures, settings, provenance, the arrays'
sha256) and ``profile.npz`` (per-model head weights and the site's domain statistics; no
pickle). It records the digest of the base models it was fitted on and is refused with any
others. Fitting lives in :mod:`allscan.training.adapt`.
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.domain.reference import DomainChecks, DomainError, load_checked_pair
from allscan.fileio import atomic_write_bytes, atomic_write_text
from allscan.models.manifest import EnsembleConfig, sha256_file

PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"
PROFILE_FORMAT = 1


@dataclass(frozen=True)
class Head:
    """A logistic-regression head on one model's standardised pooled features."""

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logit = ((features - self.mean) / self.std) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))


@dataclass(frozen=True)
class SiteProfile:
    """A fitted site profile.

    Attributes:
        models_digest: Digest of the models it was fitted on.
        heads: One head per model.
        ensemble: Weights, threshold and review band for the heads' vote.
        checks: The site's domain statistics (its images define "in domain").
        meta: Everything else recorded in ``profile.json`` (figures, counts, provenance).
        digest: sha256 of ``profile.json`` (which records the arrays' sha256).
    """

    models_digest: str
    heads: dict[str, Head]
    ensemble: EnsembleConfig
    checks: DomainChecks
    meta: dict
    digest: str = ""

    def probabilities(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each head's p(ALL) for its model's features ``(n, d)``."""
        return {name: head.probabilities(features[name]) for name, head in self.heads.items()}

    def check_models(self, digest: str) -> None:
        """Refuse models other than the ones the profile was fitted on.

        Raises:
            DomainError: The digests differ.
        """
        if digest != self.models_digest:
            raise DomainError(f"site profile was fitted on models {self.models_digest}, not on these ({digest}); "
                              "run allscan adapt again with these models")

    def save(self, folder: Path) -> str:
        """Write the profile folder; returns its digest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = self.checks.arrays()
        for name, head in self.heads.items():
            arrays |= {f"head_{name}_mean": head.mean, f"head_{name}_std": head.std,
                       f"head_{name}_coef": head.coef, f"head_{name}_intercept": np.asarray(head.intercept)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(folder / PROFILE_NPZ, buffer.getvalue())
        meta = self.meta | {
            "format": PROFILE_FORMAT,
            "models_digest": self.models_digest,
            "models": list(self.heads),
            "weights": self.ensemble.weights,
            "threshold": self.ensemble.threshold,
            "review_band": list(self.ensemble.review_band),
            "rbc_diameter": self.checks.rbc_diameter,
            "scale_tolerance": self.checks.scale_tolerance,
            "arrays": PROFILE_NPZ,
            "arrays_sha256": sha256_file(folder / PROFILE_NPZ),
        }
        atomic_write_text(folder / PROFILE_JSON, json.dumps(meta, indent=2) + "\n")
        return sha256_file(folder / PROFILE_JSON)


def load_profile(folder: Path) -> SiteProfile:
    """Read a site profile folder, checking its arrays against the digest it records.

    Raises:
        DomainError: Not a profile, tampered, or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DomainError(f"site profile {folder} is not a folder")
    meta, arrays = load_checked_pair(folder / PROFILE_JSON, None)
    try:
        if int(meta["format"]) != PROFILE_FORMAT:
            raise DomainError(f"site profile {folder} has format {meta['format']}; "
                              f"this allscan reads {PROFILE_FORMAT}")
        heads = {name: Head(arrays[f"head_{name}_mean"], arrays[f"head_{name}_std"], arrays[f"head_{name}_coef"],
                            float(arrays[f"head_{name}_intercept"])) for name in meta["models"]}
        ensemble = EnsembleConfig({k: float(v) for k, v in meta["weights"].items()}, float(meta["threshold"]),
                                  tuple(float(v) for v in meta["review_band"]))
        checks = DomainChecks.from_arrays(arrays, float(meta["rbc_diameter"]), float(meta["scale_tolerance"]))
        return SiteProfile(str(meta["models_digest"]), heads, ensemble, checks, meta,
                           sha256_file(folder / PROFILE_JSON))
    except DomainError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise DomainError(f"malformed site profile {folder}: {err}") from None
