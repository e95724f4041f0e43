"""Site profiles: a lab's own light heads on the models' features, its operating point and its domain.

A profile is a folder holding ``profile.json`` (figures, settings, provenance, the arrays'
sha256 and its own) and ``profile.npz`` (per-model head weights and the site's domain
statistics; no pickle). It records the digest of the base models it was fitted on and is
refused with any others. A profile comes from elsewhere (another machine, a colleague, a
hand edit), so loading checks everything before it is used: both digests, then every setting's
type and range and every array's shape. Fitting lives in :mod:`allscan.training.adapt`.
"""

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.domain.reference import DomainChecks, DomainError, load_checked_pair
from allscan.fileio import atomic_write_bytes, atomic_write_text
from allscan.domain.gaussian import Gaussian
from allscan.models.manifest import EnsembleConfig, sha256_file
from allscan.models.registry import MODEL_NAMES

PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"
PROFILE_FORMAT = 2
"""Format 2 added the digest of ``profile.json`` itself (:data:`DIGEST_KEY`)."""
DIGEST_KEY = "profile_sha256"


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
        meta = json.loads(json.dumps(meta))  # the values as they will read back (tuples as lists, numpy as floats)
        meta[DIGEST_KEY] = meta_digest(meta)
        atomic_write_text(folder / PROFILE_JSON, json.dumps(meta, indent=2) + "\n")
        return sha256_file(folder / PROFILE_JSON)


def meta_digest(meta: dict) -> str:
    """sha256 of ``profile.json``'s content without its own digest, in a canonical form (sorted keys, no
    spaces): any change of a value changes it, a change of layout does not."""
    content = {key: value for key, value in meta.items() if key != DIGEST_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_profile(folder: Path, origin: str = "") -> SiteProfile:
    """Read a site profile folder: ``profile.json`` checked against the digest it records, then its
    settings against their ranges, then ``profile.npz`` against its digest and its arrays' shapes.

    Args:
        folder: The profile folder.
        origin: Where the folder was named (e.g. ``$ALLSCAN_SITE``), for the messages.

    Raises:
        DomainError: Not a profile, altered after ``allscan adapt`` wrote it, or a value out of range;
            the message names the profile and, where one is at fault, the field.
    """
    folder = Path(folder)
    name = f"site profile {folder}" + (f" (from {origin})" if origin else "")
    if not folder.is_dir():
        raise DomainError(f"{name} is {'not a folder' if folder.exists() else 'missing'}")
    try:
        meta, arrays = load_checked_pair(folder / PROFILE_JSON, None, _refuse_bad_meta)
        problem = _arrays_problem(meta["models"], arrays)
        if problem:
            raise DomainError(problem)
        heads = {model: Head(arrays[f"head_{model}_mean"], arrays[f"head_{model}_std"], arrays[f"head_{model}_coef"],
                             float(arrays[f"head_{model}_intercept"])) for model in meta["models"]}
        ensemble = EnsembleConfig({k: float(v) for k, v in meta["weights"].items()}, float(meta["threshold"]),
                                  (float(meta["review_band"][0]), float(meta["review_band"][1])))
        checks = DomainChecks.from_arrays(arrays, float(meta["rbc_diameter"]), float(meta["scale_tolerance"]))
    except DomainError as err:
        raise DomainError(f"{name}: {err}; run allscan adapt again to make a new one") from None
    return SiteProfile(str(meta["models_digest"]), heads, ensemble, checks, meta, sha256_file(folder / PROFILE_JSON))


def _refuse_bad_meta(meta: object) -> None:
    """Raise DomainError for a ``profile.json`` that must not be used (before the npz it names is opened)."""
    problem = _meta_problem(meta)
    if problem:
        raise DomainError(problem)


def _meta_problem(meta: object) -> str:
    """What is wrong with a parsed ``profile.json``, or an empty string: its format, its digest, then
    each setting (a digest recomputed after an edit must not let a value out of range through)."""
    if not isinstance(meta, dict):
        return f"{PROFILE_JSON} is not a JSON object"
    if meta.get("format") != PROFILE_FORMAT or isinstance(meta.get("format"), bool):
        return f"{PROFILE_JSON} has format {meta.get('format')!r}; this allscan reads format {PROFILE_FORMAT}"
    if meta.get(DIGEST_KEY) != meta_digest(meta):
        return f"{PROFILE_JSON} does not match the digest recorded in it: it was altered after allscan adapt wrote it"
    return _settings_problem(meta)


def _settings_problem(meta: dict) -> str:
    """What is out of range among the settings that decide verdicts and domain, or an empty string."""
    models, weights = meta.get("models"), meta.get("weights")
    if not isinstance(meta.get("models_digest"), str):
        return f"models_digest must be text, not {meta.get('models_digest')!r}"
    if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)
            and len(set(models)) == len(models) and set(models) <= set(MODEL_NAMES)):
        return f"models must list distinct models of {', '.join(MODEL_NAMES)}, not {models!r}"
    if not (isinstance(weights, dict) and set(weights) == set(models)
            and all(_real(w) and w >= 0 for w in weights.values()) and sum(weights.values()) > 0):
        return f"weights must give each of models a finite weight of 0 or more, not all 0; got {weights!r}"
    threshold, band = meta.get("threshold"), meta.get("review_band")
    if not (_real(threshold) and 0 < threshold < 1):
        return f"threshold must lie between 0 and 1 (exclusive), not {threshold!r}"
    if not (isinstance(band, list) and len(band) == 2 and all(_real(v) for v in band)
            and 0 <= band[0] <= threshold <= band[1] <= 1):
        return f"review_band must be [low, high] with 0 ≤ low ≤ threshold ({threshold}) ≤ high ≤ 1, not {band!r}"
    if not (_real(meta.get("rbc_diameter")) and meta["rbc_diameter"] >= 0):
        return f"rbc_diameter must be a size in pixels (0 for none), not {meta.get('rbc_diameter')!r}"
    if not (_real(meta.get("scale_tolerance")) and meta["scale_tolerance"] >= 1):
        return f"scale_tolerance must be a factor of 1 or more, not {meta.get('scale_tolerance')!r}"
    if meta.get("arrays") != PROFILE_NPZ or not isinstance(meta.get("arrays_sha256"), str):
        return f"arrays must be {PROFILE_NPZ} with its sha256, not {meta.get('arrays')!r}"
    return ""


def _real(value: object) -> bool:
    """A finite JSON number (``true`` is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _arrays_problem(models: list[str], arrays: dict[str, np.ndarray]) -> str:
    """What is wrong with ``profile.npz``'s heads and domain statistics, or an empty string."""
    for model in models:
        try:
            mean, std, coef, intercept = (np.asarray(arrays[f"head_{model}_{part}"])
                                          for part in ("mean", "std", "coef", "intercept"))
        except KeyError as err:
            return f"{PROFILE_NPZ} lacks {err}"
        if not (mean.ndim == 1 and mean.size and mean.shape == std.shape == coef.shape and intercept.size == 1):
            return f"{PROFILE_NPZ}: the head of {model} has mismatched shapes"
        if not (all(_finite(a) for a in (mean, std, coef, intercept)) and (std > 0).all()):
            return f"{PROFILE_NPZ}: the head of {model} holds values that are not finite, or a spread of 0 or less"
    for prefix in ("colour", "features"):
        try:
            problem = _gaussian_problem(Gaussian.from_arrays(arrays, prefix))
        except (KeyError, TypeError, ValueError) as err:
            problem = f"cannot be read ({err})"
        if problem:
            return f"{PROFILE_NPZ}: the {prefix} statistics {problem}"
    return ""


def _finite(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.number) and bool(np.isfinite(array).all())


def _gaussian_problem(gaussian: Gaussian) -> str:
    """What is wrong with a fitted Gaussian's arrays, or an empty string."""
    d = gaussian.center.shape[0] if gaussian.center.ndim == 1 else 0
    k = gaussian.projection.shape[0] if gaussian.projection.size else d
    shapes = (gaussian.center.shape == gaussian.spread.shape == (d,) and d > 0
              and (not gaussian.projection.size or gaussian.projection.shape == (k, d))
              and gaussian.location.shape == (k,) and gaussian.precision.shape == (k, k))
    if not shapes:
        return "have mismatched shapes"
    values = (gaussian.center, gaussian.spread, gaussian.projection, gaussian.location, gaussian.precision)
    if not (all(_finite(a) for a in values) and (gaussian.spread > 0).all()
            and 0 < gaussian.threshold < math.inf):
        return "hold values that are not finite, a spread of 0 or less, or a limit of 0 or less"
    return ""
