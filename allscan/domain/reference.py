"""What the models were trained on, as the domain code needs it: red-cell size, stain colour and the
distributions the out-of-domain guard compares against.

It lives beside the models as ``domain.json`` (sizes, thresholds, provenance, the npz's sha256)
and ``domain.npz`` (arrays), written by the shipping step from the training split. The
manifest records ``domain.json``'s sha256, so it joins the models' digest and a stale or
tampered file is refused.
"""

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from allscan.domain.gaussian import Gaussian
from allscan.fileio import atomic_write_bytes, atomic_write_text
from allscan.models.manifest import Manifest, ManifestError, sha256_file

DOMAIN_JSON = "domain.json"
DOMAIN_NPZ = "domain.npz"
SCALE_TOLERANCE = 1.3
"""Red cells within this factor of the reference size count as the reference scale: such images
are not rescaled and are in domain on scale. The reference's own spread widens it (see
:func:`scale_tolerance`)."""
SCALE_QUANTILES = (0.005, 0.995)
SINGLE_FIELD_SIDE = 336
"""Images no longer than this (1.5 training fields) are single fields: their red-cell estimate rests on
a few dozen cells and varies as much as the training fields' estimates do."""


def scale_tolerance(diameters: np.ndarray) -> float:
    """The factor around the median that holds the reference images' red-cell sizes between the
    0.5th and 99.5th percentiles, and at least :data:`SCALE_TOLERANCE`.

    The estimate varies from field to field (crowded or sparse cells, pale centres), so
    the training images' own spread is the honest measure of "the training scale"."""
    diameters = np.asarray([d for d in diameters if d is not None and np.isfinite(d)], dtype=np.float64)
    if len(diameters) == 0:
        return SCALE_TOLERANCE
    median = np.median(diameters)
    low, high = np.quantile(diameters, SCALE_QUANTILES)
    return float(max(SCALE_TOLERANCE, high / median, median / low))


class DomainError(ManifestError):
    """A domain reference or site profile that cannot be used."""


@dataclass(frozen=True)
class DomainChecks:
    """The statistics an image is judged against: training data's, or a site's.

    Attributes:
        rbc_diameter: Typical red-cell diameter in pixels of the reference images (0 when none
            could be measured: then images are not rescaled and scale is not checked).
        scale_tolerance: Factor within which a single field's red-cell size counts as the
            reference's (see :meth:`tolerance`).
        colour: Distribution of the reference images' colour statistics (as they came, unnormalised).
        features: Distribution of the models' pooled features of the reference images' fields.
    """

    rbc_diameter: float
    scale_tolerance: float
    colour: Gaussian
    features: Gaussian

    def tolerance(self, long_side: int, smaller: bool = False) -> float:
        """The scale tolerance for an image with this long side whose red cells read larger than the reference's
        (with ``smaller``, smaller): the reference images' own spread for a single field whose cells read larger,
        :data:`SCALE_TOLERANCE` for larger images, whose estimate rests on many cells, and for cells that read
        smaller.

        A single field's estimate strays one way: merged cells read larger, never smaller (of Aria's 2,226
        training fields measured, the 0.5th percentile read 12.9 px and the 99.5th 42.8 around a median of 15.5),
        so the spread that keeps crowded training-like fields from being rescaled let through, at the scale they
        came, fields whose cells read 2-2.9 times smaller: a smear imaged at a lower magnification, or a camera
        frame reduced to 224 px, was scored in domain.
        """
        if long_side > SINGLE_FIELD_SIDE or smaller:
            return min(self.scale_tolerance, SCALE_TOLERANCE)
        return self.scale_tolerance

    def arrays(self) -> dict[str, np.ndarray]:
        return self.colour.arrays("colour") | self.features.arrays("features")

    @classmethod
    def from_arrays(cls, arrays, rbc_diameter: float, scale_tolerance: float) -> "DomainChecks":
        return cls(rbc_diameter, scale_tolerance, Gaussian.from_arrays(arrays, "colour"),
                   Gaussian.from_arrays(arrays, "features"))


@dataclass(frozen=True)
class DomainReference:
    """The training domain: its checks plus the colour every image is normalised towards.

    Attributes:
        checks: Statistics of the training split.
        stain_reference: Mean L*a*b* statistics of the training images (Reinhard target).
        feature_models: Model names, in the order their features are concatenated.
        fitted_on: Provenance (data folder, split, image count).
        model_files: sha256 of each model file it was fitted with: new models need a new reference.
    """

    checks: DomainChecks
    stain_reference: np.ndarray
    feature_models: tuple[str, ...]
    fitted_on: str = ""
    model_files: dict[str, str] = field(default_factory=dict)

    def check_models(self, model_files: dict[str, str], path: Path) -> None:
        """Refuse to pair this reference with model files other than those it was fitted with.

        Raises:
            DomainError: The models changed since the reference was fitted.
        """
        if model_files != self.model_files:
            raise DomainError(f"{path} was fitted for other model files than the manifest lists; refit it with "
                              "allscan fit-domain DATA_DIR")

    def save(self, folder: Path) -> str:
        """Write ``domain.json`` and ``domain.npz`` into ``folder``; returns ``domain.json``'s sha256."""
        folder = Path(folder)
        buffer = io.BytesIO()
        np.savez(buffer, stain_reference=self.stain_reference, **self.checks.arrays())
        atomic_write_bytes(folder / DOMAIN_NPZ, buffer.getvalue())
        meta = {
            "rbc_diameter": round(float(self.checks.rbc_diameter), 3),
            "scale_tolerance": self.checks.scale_tolerance,
            "feature_models": list(self.feature_models),
            "colour_threshold": self.checks.colour.threshold,
            "feature_threshold": self.checks.features.threshold,
            "fitted_on": self.fitted_on,
            "model_files": self.model_files,
            "arrays": DOMAIN_NPZ,
            "arrays_sha256": sha256_file(folder / DOMAIN_NPZ),
        }
        atomic_write_text(folder / DOMAIN_JSON, json.dumps(meta, indent=2) + "\n")
        return sha256_file(folder / DOMAIN_JSON)

    @classmethod
    def load(cls, path: Path, sha256: str) -> "DomainReference":
        """Read a domain reference, checking its JSON file against ``sha256`` and the npz against it.

        Raises:
            DomainError: Missing, tampered or malformed files.
        """
        meta, arrays = load_checked_pair(Path(path), sha256)
        try:
            checks = DomainChecks.from_arrays(arrays, float(meta["rbc_diameter"]), float(meta["scale_tolerance"]))
            check_limits(checks)
            return cls(checks, np.asarray(arrays["stain_reference"], dtype=np.float64),
                       tuple(meta["feature_models"]), meta.get("fitted_on", ""), dict(meta["model_files"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DomainError(f"malformed domain reference {path}: {err}") from None


    @classmethod
    def for_models(cls, models_dir: Path, manifest: Manifest) -> "DomainReference | None":
        """The reference the manifest records beside its models, checked against its digest and
        against the model files it was fitted for; None when the manifest records none.

        Raises:
            DomainError: Missing, tampered or malformed files, or a reference fitted for other models.
        """
        if not manifest.domain:
            return None
        path = Path(models_dir) / manifest.domain["file"]
        reference = cls.load(path, manifest.domain["sha256"])
        reference.check_models({name: entry.sha256 for name, entry in sorted(manifest.models.items())}, path)
        return reference


def check_limits(checks: DomainChecks) -> None:
    """The guard's colour and feature limits are finite and above 0 (a reference fitted on one image has limits
    of 0, and every image the guard then judged ended the run dividing by them).

    Raises:
        ValueError: A limit that is not.
    """
    for name, limit in (("colour", checks.colour.threshold), ("feature", checks.features.threshold)):
        if not (math.isfinite(limit) and limit > 0):
            raise ValueError(f"its {name} limit is {limit}, not a number above 0")


def load_checked_pair(meta_path: Path, sha256: str | None, check: Callable[[dict], None] | None = None
                      ) -> tuple[dict, dict[str, np.ndarray]]:
    """A JSON file (checked against ``sha256`` when given) and the npz it names (checked against the
    digest it records), loaded without pickle.

    Args:
        meta_path: The JSON file.
        sha256: Its expected digest, or None.
        check: Called with the parsed JSON before the npz it names is opened; raises DomainError to refuse it.

    Raises:
        DomainError: A file is missing, does not match its digest, or cannot be parsed.
    """
    if not meta_path.is_file():
        raise DomainError(f"{meta_path} does not exist")
    if sha256 is not None and sha256_file(meta_path) != sha256:
        raise DomainError(f"{meta_path} does not match the digest recorded for it")
    try:
        meta = json.loads(meta_path.read_text())
        if check is not None:
            check(meta)
        arrays_path = meta_path.parent / meta["arrays"]
        if not arrays_path.is_file():
            raise DomainError(f"{arrays_path} does not exist")
        if sha256_file(arrays_path) != meta["arrays_sha256"]:
            raise DomainError(f"{arrays_path} does not match the digest recorded in {meta_path.name}")
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except DomainError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DomainError(f"cannot read {meta_path}: {err}") from None
    return meta, arrays
