"""Site profiles: a lab's own light heads on the models' features, its operating points and its domain.

A profile holds a field part (heads on the field models' features, their threshold and review
band, the site's domain statistics), a cell part (heads on the cell classifier's features and the
site's cell threshold) or both. It is a folder holding ``profile.json`` (figures, settings,
provenance, the arrays' sha256 and its own) and ``profile.npz`` (head weights and domain
statistics; no pickle). Each part records the digest of the models it was fitted on and is refused
with any others, and the runtime that ran them (the field part also its domain options): scoring
takes these where none are given and refuses others (:meth:`SiteProfile.settle`). A profile comes
from elsewhere (another machine, a colleague, a hand edit), so loading checks everything before it
is used: both digests, then every setting's type and range and every array's shape. Fitting lives
in :mod:`allscan.training.adapt` and :mod:`allscan.training.adapt_cells`.
"""

import hashlib
import io
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from allscan.domain.fields import DomainOptions
from allscan.domain.gaussian import Gaussian
from allscan.domain.reference import DomainChecks, DomainError, load_checked_pair
from allscan.fileio import atomic_write_bytes, atomic_write_text, replace_folder
from allscan.models.calibration import weighted_mean
from allscan.models.manifest import EnsembleConfig, sha256_file
from allscan.models.registry import CELL_MODEL_NAMES, MODEL_NAMES

PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"
PROFILE_FORMAT = 3
"""Format 3 holds a field part, a cell part or both, each under its own key (:data:`PARTS`)."""
FIELD_ONLY_FORMAT = 2
"""Format 2 (which added the digest of ``profile.json`` itself, :data:`DIGEST_KEY`) held the field
part's settings at the top level; it is still read, as a profile with a field part only."""
DIGEST_KEY = "profile_sha256"
FIELDS, CELLS = "fields", "cells"
PARTS = (FIELDS, CELLS)
PART_WORDS = {FIELDS: "field", CELLS: "cell"}
"""Each part's name in the messages (``the field part``)."""
HEAD_PREFIX = {FIELDS: "head", CELLS: "cell_head"}
"""How each part's head arrays are named in ``profile.npz``: ``<prefix>_<model>_<mean|std|coef|intercept>``."""
HEAD_ARRAYS = ("mean", "std", "coef", "intercept")
RUNTIME, OPTIONS = "runtime", "options"
"""The keys of a part's entry recording the runtime its models ran in while it was fitted (``keras`` or ``openvino``;
absent from profiles written before it was recorded) and, for the field part, the domain options
(:meth:`~allscan.domain.fields.DomainOptions.key`)."""
FITTED_RUNTIMES = ("keras", "openvino")


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


def _head_arrays(prefix: str, heads: dict[str, Head]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, head in heads.items():
        arrays |= {f"{prefix}_{name}_mean": head.mean, f"{prefix}_{name}_std": head.std,
                   f"{prefix}_{name}_coef": head.coef, f"{prefix}_{name}_intercept": np.asarray(head.intercept)}
    return arrays


def _heads_from(prefix: str, models: list[str], arrays: dict[str, np.ndarray]) -> dict[str, Head]:
    return {model: Head(*(arrays[f"{prefix}_{model}_{part}"] for part in HEAD_ARRAYS[:3]),
                        float(arrays[f"{prefix}_{model}_intercept"])) for model in models}


@dataclass(frozen=True)
class FieldPart:
    """Heads on the field models' features, their vote and the site's domain.

    Attributes:
        models_digest: Digest of the field models it was fitted on.
        heads: One head per model.
        ensemble: Weights, threshold and review band for the heads' vote.
        checks: The site's domain statistics (its images define "in domain").
        meta: Everything else recorded for it (source, figures, counts, options).
    """

    models_digest: str
    heads: dict[str, Head]
    ensemble: EnsembleConfig
    checks: DomainChecks
    meta: dict = field(default_factory=dict)

    def probabilities(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each head's p(ALL) for its model's features ``(n, d)``."""
        return {name: head.probabilities(features[name]) for name, head in self.heads.items()}

    @property
    def runtime(self) -> str | None:
        """The runtime the models ran in while it was fitted; None where the profile predates recording it."""
        return self.meta.get(RUNTIME)

    @property
    def options(self) -> dict | None:
        """The domain options it was fitted with (:meth:`~allscan.domain.fields.DomainOptions.key`); None where
        not recorded."""
        return self.meta.get(OPTIONS)

    def check_models(self, digest: str) -> None:
        """Refuse models other than the ones the part was fitted on.

        Raises:
            DomainError: The digests differ.
        """
        if digest != self.models_digest:
            raise DomainError(f"fitted on models {self.models_digest}, not on these ({digest}); "
                              "run allscan adapt again with these models")

    def settings(self) -> dict:
        """Its ``profile.json`` entry."""
        return self.meta | {
            "models_digest": self.models_digest,
            "models": list(self.heads),
            "weights": self.ensemble.weights,
            "threshold": self.ensemble.threshold,
            "review_band": list(self.ensemble.review_band),
            "rbc_diameter": self.checks.rbc_diameter,
            "scale_tolerance": self.checks.scale_tolerance,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return self.checks.arrays() | _head_arrays(HEAD_PREFIX[FIELDS], self.heads)

    @classmethod
    def read(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "FieldPart":
        """The part from its checked ``profile.json`` entry and ``profile.npz``'s arrays."""
        ensemble = EnsembleConfig({k: float(v) for k, v in meta["weights"].items()}, float(meta["threshold"]),
                                  (float(meta["review_band"][0]), float(meta["review_band"][1])))
        checks = DomainChecks.from_arrays(arrays, float(meta["rbc_diameter"]), float(meta["scale_tolerance"]))
        return cls(str(meta["models_digest"]), _heads_from(HEAD_PREFIX[FIELDS], meta["models"], arrays), ensemble,
                   checks, meta)


@dataclass(frozen=True)
class CellPart:
    """Heads on the cell classifier's members' features and the site's cell threshold.

    Attributes:
        models_digest: Digest of the cell models it was fitted on.
        heads: One head per cell model.
        weights: Each head's weight in p(blast).
        threshold: p(blast) at or above which a cell counts as a blast.
        meta: Everything else recorded for it (source, figures, counts).
    """

    models_digest: str
    heads: dict[str, Head]
    weights: dict[str, float]
    threshold: float
    meta: dict = field(default_factory=dict)

    def probabilities(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """p(blast) ``(n,)`` and each head's p ``{name: (n,)}`` for the members' features ``{name: (n, d)}``."""
        members = {name: head.probabilities(features[name]) for name, head in self.heads.items()}
        return np.asarray(weighted_mean(members, self.weights), dtype=float).reshape(-1), members

    @property
    def runtime(self) -> str | None:
        """The runtime the cell models ran in while it was fitted; None where the profile predates recording it."""
        return self.meta.get(RUNTIME)

    def check_models(self, digest: str) -> None:
        """Refuse cell models other than the ones the part was fitted on.

        Raises:
            DomainError: The digests differ.
        """
        if digest != self.models_digest:
            raise DomainError(f"its cell heads were fitted on cell models {self.models_digest}, not on "
                              f"these ({digest}); run allscan adapt --cells again with these models")

    def settings(self) -> dict:
        """Its ``profile.json`` entry."""
        return self.meta | {"models_digest": self.models_digest, "models": list(self.heads),
                            "weights": self.weights, "threshold": self.threshold}

    def arrays(self) -> dict[str, np.ndarray]:
        return _head_arrays(HEAD_PREFIX[CELLS], self.heads)

    @classmethod
    def read(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "CellPart":
        """The part from its checked ``profile.json`` entry and ``profile.npz``'s arrays."""
        return cls(str(meta["models_digest"]), _heads_from(HEAD_PREFIX[CELLS], meta["models"], arrays),
                   {k: float(v) for k, v in meta["weights"].items()}, float(meta["threshold"]), meta)


@dataclass(frozen=True)
class SiteProfile:
    """A fitted site profile: a field part, a cell part or both.

    Attributes:
        fields: Heads, operating point and domain for the field models, if fitted.
        cells: Heads and threshold for the cell classifier, if fitted.
        created: When it was fitted (ISO 8601).
        digest: sha256 of ``profile.json`` (which records the arrays' sha256).
    """

    fields: FieldPart | None = None
    cells: CellPart | None = None
    created: str = ""
    digest: str = ""

    def __post_init__(self):
        if self.fields is None and self.cells is None:
            raise ValueError("a site profile needs a field part, a cell part or both")

    def parts(self) -> dict[str, FieldPart | CellPart]:
        """The parts it holds, by name."""
        return {name: part for name, part in ((FIELDS, self.fields), (CELLS, self.cells)) if part is not None}

    def check_models(self, digest: str) -> None:
        """Refuse field models other than the ones its field part was fitted on (any, without one).

        Raises:
            DomainError: The digests differ.
        """
        if self.fields is not None:
            self.fields.check_models(digest)

    def settle(self, options: DomainOptions, given: Collection[str], runtimes: dict[str, str],
               auto: Callable[[str], str]) -> tuple[DomainOptions, dict[str, str]]:
        """The domain options and runtimes to score with: those its parts were fitted with, in place of the
        options not ``given`` and of the runtime ``auto``; its heads then see the features they were fitted on.

        Args:
            options: The options asked for.
            given: The names of the options in ``options`` given explicitly (``stain_norm``, ``rbc_diameter``).
            runtimes: The runtime asked for (``auto``, ``keras`` or ``openvino``), by part name.
            auto: The runtime ``auto`` picks for a part's models, by part name: what a part that records none
                was fitted under (``adapt`` ran ``auto`` until it recorded the runtime, and the part's models
                digest fixes the OpenVINO files ``auto`` goes by).

        Raises:
            DomainError: An option given, or a runtime other than ``auto``, that is not the one a part was fitted
                with; the message names the option, the part's value and the remedy.
        """
        if self.fields is not None and self.fields.options is not None:
            for name, value in self.fields.options.items():
                if name in given and getattr(options, name) != value:
                    raise DomainError(_conflict(FIELDS, name, value, getattr(options, name)))
            options = replace(options, **self.fields.options)
        settled = dict(runtimes)
        used = {name: part for name, part in self.parts().items() if name == FIELDS or options.cells}
        for name, part in used.items():
            asked = runtimes[name]
            if part.runtime is None and asked == "auto":
                continue
            fitted = part.runtime or auto(name)
            if asked not in ("auto", fitted):
                note = "" if part.runtime else " (what auto picks for these models; the profile predates recording it)"
                raise DomainError(_conflict(name, RUNTIME, fitted, asked, note))
            settled[name] = fitted
        return options, settled

    def describe(self) -> dict:
        """For the run metadata: its digest, where each part was fitted, their cross-validated figures and the
        runtime each was fitted under (None where not recorded)."""
        parts = self.parts()
        return {"digest": self.digest, "source": "; ".join(str(p.meta.get("source", "")) for p in parts.values()),
                "cross_validated": {name: p.meta.get("cross_validated", {}) for name, p in parts.items()},
                RUNTIME: {name: p.runtime for name, p in parts.items()}}

    def save(self, folder: Path) -> str:
        """Write the profile folder all at once (:func:`~allscan.fileio.replace_folder`: cut short, it leaves the
        profile that was there whole); returns its digest."""
        return replace_folder(Path(folder), self._write)

    def _write(self, folder: Path) -> str:
        arrays: dict[str, np.ndarray] = {}
        for part in self.parts().values():
            arrays |= part.arrays()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(folder / PROFILE_NPZ, buffer.getvalue())
        meta = {"format": PROFILE_FORMAT, "created": self.created,
                **{name: part.settings() for name, part in self.parts().items()},
                "arrays": PROFILE_NPZ, "arrays_sha256": sha256_file(folder / PROFILE_NPZ)}
        meta = json.loads(json.dumps(meta))  # the values as they will read back (tuples as lists, numpy as floats)
        meta[DIGEST_KEY] = meta_digest(meta)
        atomic_write_text(folder / PROFILE_JSON, json.dumps(meta, indent=2) + "\n")
        return sha256_file(folder / PROFILE_JSON)


def spelt(name: str, value: object) -> str:
    """An option's value as the command line gives it (``--no-stain-norm``, ``--rbc-diameter 40``)."""
    if name == "stain_norm":
        return "--stain-norm" if value else "--no-stain-norm"
    if value is None:
        return "the red-cell size estimated (no --rbc-diameter)"
    return f"{_flag(name)} {value:g}" if _real(value) else f"{_flag(name)} {value}"


def _flag(name: str) -> str:
    """The command-line option of a setting (``rbc_diameter`` → ``--rbc-diameter``)."""
    return f"--{name.replace('_', '-')}"


def _conflict(part: str, name: str, fitted: object, asked: object, note: str = "") -> str:
    """The refusal of an option (or runtime) ``asked`` for that differs from the one a part was ``fitted`` with."""
    command = "adapt" if part == FIELDS else "adapt --cells"
    return (f"its {PART_WORDS[part]} part was fitted with {spelt(name, fitted)}{note}, not {spelt(name, asked)}; "
            f"drop {_flag(name)} to score as it was fitted, or run allscan {command} again with "
            f"{spelt(name, asked)}")


def meta_digest(meta: dict) -> str:
    """sha256 of ``profile.json``'s content without its own digest, in a canonical form (sorted keys, no
    spaces): any change of a value changes it, a change of layout does not."""
    content = {key: value for key, value in meta.items() if key != DIGEST_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def profile_name(folder: Path, origin: str = "") -> str:
    """How messages name a profile: its folder and, where given, where that was named (``$ALLSCAN_SITE``)."""
    return f"site profile {folder}" + (f" (from {origin})" if origin else "")


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
    name = profile_name(folder, origin)
    if not folder.is_dir():
        raise DomainError(f"{name} is {'not a folder' if folder.exists() else 'missing'}")
    try:
        meta, arrays = load_checked_pair(folder / PROFILE_JSON, None, _refuse_bad_meta)
        parts = part_settings(meta)
        problem = _arrays_problem(parts, arrays)
        if problem:
            raise DomainError(problem)
        fields = FieldPart.read(parts[FIELDS], arrays) if FIELDS in parts else None
        cells = CellPart.read(parts[CELLS], arrays) if CELLS in parts else None
    except DomainError as err:
        raise DomainError(f"{name}: {err}; run allscan adapt again to make a new one") from None
    return SiteProfile(fields, cells, str(meta.get("created", "")), sha256_file(folder / PROFILE_JSON))


def part_settings(meta: dict) -> dict[str, dict]:
    """Each part's entry of a parsed ``profile.json``, by name (a format-2 profile's top level is its field part)."""
    if meta.get("format") == FIELD_ONLY_FORMAT:
        return {FIELDS: meta}
    return {name: meta[name] for name in PARTS if name in meta}


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
    fmt = meta.get("format")
    if isinstance(fmt, bool) or fmt not in (FIELD_ONLY_FORMAT, PROFILE_FORMAT):
        return f"{PROFILE_JSON} has format {fmt!r}; this allscan reads formats {FIELD_ONLY_FORMAT} and {PROFILE_FORMAT}"
    if meta.get(DIGEST_KEY) != meta_digest(meta):
        return f"{PROFILE_JSON} does not match the digest recorded in it: it was altered after allscan adapt wrote it"
    return _settings_problem(meta)


def _settings_problem(meta: dict) -> str:
    """What is out of range among the settings that decide verdicts, cell calls and domain, or an empty string."""
    if meta.get("arrays") != PROFILE_NPZ or not isinstance(meta.get("arrays_sha256"), str):
        return f"arrays must be {PROFILE_NPZ} with its sha256, not {meta.get('arrays')!r}"
    if meta["format"] == FIELD_ONLY_FORMAT:
        return _field_problem(meta)
    if not any(name in meta for name in PARTS):
        return f"{PROFILE_JSON} holds neither a {FIELDS} nor a {CELLS} part"
    for name, check in ((FIELDS, _field_problem), (CELLS, _cell_problem)):
        if name not in meta:
            continue
        part = meta[name]
        problem = check(part) if isinstance(part, dict) else f"must be an object, not {part!r}"
        if problem:
            return f"{name}: {problem}"
    return ""


def _field_problem(part: dict) -> str:
    """What is out of range in the field part's settings, or an empty string."""
    problem = _heads_problem(part, MODEL_NAMES)
    if problem:
        return problem
    threshold, band = part["threshold"], part.get("review_band")
    if not (isinstance(band, list) and len(band) == 2 and all(_real(v) for v in band)
            and 0 <= band[0] <= threshold <= band[1] <= 1):
        return f"review_band must be [low, high] with 0 ≤ low ≤ threshold ({threshold}) ≤ high ≤ 1, not {band!r}"
    if not (_real(part.get("rbc_diameter")) and part["rbc_diameter"] >= 0):
        return f"rbc_diameter must be a size in pixels (0 for none), not {part.get('rbc_diameter')!r}"
    if not (_real(part.get("scale_tolerance")) and part["scale_tolerance"] >= 1):
        return f"scale_tolerance must be a factor of 1 or more, not {part.get('scale_tolerance')!r}"
    return _options_problem(part) or _runtime_problem(part)


def _cell_problem(part: dict) -> str:
    """What is out of range in the cell part's settings, or an empty string."""
    return _heads_problem(part, CELL_MODEL_NAMES) or _runtime_problem(part)


def _options_problem(part: dict) -> str:
    """What is wrong with the domain options a field part records (if it does), or an empty string."""
    if OPTIONS not in part:
        return ""
    options = part[OPTIONS]
    size = options.get("rbc_diameter") if isinstance(options, dict) else None
    if not (isinstance(options, dict) and set(options) == set(DomainOptions().key())
            and isinstance(options["stain_norm"], bool) and (size is None or _real(size) and size > 0)):
        return f"options must give stain_norm (true or false) and rbc_diameter (null or above 0), not {options!r}"
    return ""


def _runtime_problem(part: dict) -> str:
    """What is wrong with the runtime a part records (if it does), or an empty string."""
    if RUNTIME in part and part[RUNTIME] not in FITTED_RUNTIMES:
        return f"runtime must be one of {', '.join(FITTED_RUNTIMES)}, not {part[RUNTIME]!r}"
    return ""


def _heads_problem(part: dict, known: tuple[str, ...]) -> str:
    """What is wrong with a part's models digest, models (of ``known``), weights and threshold, or an empty string."""
    models, weights = part.get("models"), part.get("weights")
    if not isinstance(part.get("models_digest"), str):
        return f"models_digest must be text, not {part.get('models_digest')!r}"
    if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)
            and len(set(models)) == len(models) and set(models) <= set(known)):
        return f"models must list distinct models of {', '.join(known)}, not {models!r}"
    if not (isinstance(weights, dict) and set(weights) == set(models)
            and all(_real(w) and w >= 0 for w in weights.values()) and sum(weights.values()) > 0):
        return f"weights must give each of models a finite weight of 0 or more, not all 0; got {weights!r}"
    threshold = part.get("threshold")
    if not (_real(threshold) and 0 < threshold < 1):
        return f"threshold must lie between 0 and 1 (exclusive), not {threshold!r}"
    return ""


def _real(value: object) -> bool:
    """A finite JSON number (``true`` is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _arrays_problem(parts: dict[str, dict], arrays: dict[str, np.ndarray]) -> str:
    """What is wrong with ``profile.npz``'s heads and domain statistics for the parts it serves, or an empty string."""
    for name, part in parts.items():
        problem = _head_arrays_problem(HEAD_PREFIX[name], part["models"], arrays)
        if problem:
            return f"{PROFILE_NPZ}: {problem}" + (" (cell heads)" if name == CELLS else "")
    if FIELDS not in parts:
        return ""
    for prefix in ("colour", "features"):
        try:
            problem = _gaussian_problem(Gaussian.from_arrays(arrays, prefix))
        except (KeyError, TypeError, ValueError) as err:
            problem = f"cannot be read ({err})"
        if problem:
            return f"{PROFILE_NPZ}: the {prefix} statistics {problem}"
    return ""


def _head_arrays_problem(prefix: str, models: list[str], arrays: dict[str, np.ndarray]) -> str:
    for model in models:
        try:
            mean, std, coef, intercept = (np.asarray(arrays[f"{prefix}_{model}_{part}"]) for part in HEAD_ARRAYS)
        except KeyError as err:
            return f"lacks {err}"
        if not (mean.ndim == 1 and mean.size and mean.shape == std.shape == coef.shape and intercept.size == 1):
            return f"the head of {model} has mismatched shapes"
        if not (all(_finite(a) for a in (mean, std, coef, intercept)) and (std > 0).all()):
            return f"the head of {model} holds values that are not finite, or a spread of 0 or less"
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
