"""The models manifest (``models/manifest.json``): which files make the ensemble and how to combine them."""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from allscan.models.calibration import Calibration
from allscan.fileio import atomic_write_text
from allscan.models.registry import REGISTRY

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(Exception):
    """A models folder that cannot be used: no manifest, a bad entry or a file that fails its check."""


OPENVINO_PRECISIONS = ("int8", "bf16", "fp32")


RUNTIMES = ("auto", "openvino", "keras")
"""What can run a manifest's models: ``auto`` is OpenVINO when the manifest lists its files for every member,
else Keras (kept here, with no heavy import, so the command line can check a choice before TensorFlow loads)."""


@dataclass(frozen=True)
class OpenVINOEntry:
    """A member's OpenVINO files, converted from its ``.keras`` file when the models shipped.

    Attributes:
        xml: File name of the model's graph inside the models folder.
        xml_sha256: Digest ``xml`` must match before it is loaded.
        bin: File name of its weights.
        bin_sha256: Digest ``bin`` must match.
        source_sha256: sha256 of the ``.keras`` file it was converted from; must be the entry's own.
        precision: ``int8`` (quantised) or ``bf16`` (float files run in bfloat16), each where the rule in
            :mod:`allscan.training.convert` accepted it, else ``fp32``.
        int8_check: The int8 candidate's figures against fp32 on the validation split, whichever shipped.
        bf16_check: The bfloat16 candidate's likewise, where int8 was refused and the converting machine
            could run bfloat16.
    """

    xml: str
    xml_sha256: str
    bin: str
    bin_sha256: str
    source_sha256: str
    precision: str
    int8_check: dict = field(default_factory=dict)
    bf16_check: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One ensemble member as shipped.

    Attributes:
        name: Registry name (``resnet50``, ``efficientnet_b3``, ``alexnet``, ``vgg16``).
        file: File name of the ``.keras`` model inside the models folder.
        sha256: Digest the file must match before it is loaded.
        input_size: Square input side in pixels.
        preprocessing: Name of the preprocessing function.
        architecture: Human-readable architecture.
        training: How it was trained (data, split, epochs, recipe).
        validation: Validation-split figures.
        openvino: Its OpenVINO files, or None where it was never converted (then it runs in Keras).
    """

    name: str
    file: str
    sha256: str
    input_size: int
    preprocessing: str
    architecture: str = ""
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    openvino: OpenVINOEntry | None = None

    def files(self) -> dict[str, str]:
        """Every file of this member with its sha256."""
        files = {self.file: self.sha256}
        if self.openvino is not None:
            files |= {self.openvino.xml: self.openvino.xml_sha256, self.openvino.bin: self.openvino.bin_sha256}
        return files


@dataclass(frozen=True)
class EnsembleConfig:
    """How per-model probabilities become a verdict, tuned on validation data.

    Attributes:
        weights: Weight of each model in the soft vote; they sum to 1.
        threshold: Ensemble probability at or above which the verdict is ALL.
        review_band: ``(low, high)``: an ensemble probability inside it is flagged for review.
        tuned_on: What the settings were chosen on, in words.
        calibration: Platt scalings of the members and the ensemble, applied before the vote;
            threshold and review band are calibrated probabilities.
    """

    weights: dict[str, float]
    threshold: float = 0.5
    review_band: tuple[float, float] = (0.25, 0.75)
    tuned_on: str = ""
    calibration: Calibration = field(default_factory=Calibration)


@dataclass(frozen=True)
class Manifest:
    """The whole manifest; ``digest`` identifies this exact set of models and settings."""

    models: dict[str, ModelEntry]
    ensemble: EnsembleConfig
    blank_box: tuple[int, int, int, int] | None = None
    dataset: str = ""
    format_version: int = FORMAT_VERSION
    domain: dict | None = None
    """``{"file": "domain.json", "sha256": ...}``: the domain reference fitted on the training split."""

    @property
    def digest(self) -> str:
        """Short digest of the model files and ensemble settings; results are keyed by it."""
        ensemble = asdict(self.ensemble) | {"tuned_on": None}
        if self.ensemble.calibration == Calibration():
            del ensemble["calibration"]  # uncalibrated manifests keep the digest they had before calibration existed
        key = {"models": {n: m.sha256 for n, m in sorted(self.models.items())}, "ensemble": ensemble}
        if self.domain:
            key["domain"] = self.domain["sha256"]
        converted = {n: [m.openvino.xml_sha256, m.openvino.bin_sha256] for n, m in sorted(self.models.items())
                     if m.openvino is not None}
        if converted:  # manifests without OpenVINO files keep the digest they had before it existed
            key["openvino"] = converted
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        data = asdict(self)
        for entry in data["models"].values():
            if entry["openvino"] is None:
                del entry["openvino"]  # unconverted members read as they did before OpenVINO existed
        data["ensemble"]["review_band"] = list(self.ensemble.review_band)
        data["blank_box"] = list(self.blank_box) if self.blank_box else None
        return json.dumps(data, indent=2) + "\n"

    def with_model(self, entry: ModelEntry) -> "Manifest":
        return replace(self, models={**self.models, entry.name: entry})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(models_dir: Path) -> Manifest:
    """Read and validate ``models_dir/manifest.json`` (files are checked when loaded).

    Raises:
        ManifestError: Missing or malformed manifest: a duplicate key, an unknown model, two
            entries for one file, weights for an unlisted model, or an out-of-range setting.
    """
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no models found: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
        models = {name: _model_entry(name, m) for name, m in data["models"].items()}
        ens = data["ensemble"]
        ensemble = EnsembleConfig(
            weights={k: float(v) for k, v in ens["weights"].items()},
            threshold=float(ens["threshold"]),
            review_band=tuple(float(v) for v in ens["review_band"]),
            tuned_on=ens.get("tuned_on", ""),
            calibration=Calibration.from_dict(ens["calibration"]) if ens.get("calibration") else Calibration(),
        )
        box = data.get("blank_box")
        domain = data.get("domain")
        if domain is not None and not (isinstance(domain.get("file"), str) and isinstance(domain.get("sha256"), str)):
            raise ValueError("domain needs a file and its sha256")
        manifest = Manifest(models, ensemble, tuple(box) if box else None, data.get("dataset", ""),
                            int(data.get("format_version", FORMAT_VERSION)), domain)
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err.strerror or err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ManifestError(f"malformed manifest {path}: {err}") from None
    if not manifest.models:
        raise ManifestError(f"no models found: {path} lists no models")
    problem = _problem(manifest)
    if problem:
        raise ManifestError(f"malformed manifest {path}: {problem}")
    return manifest


def _model_entry(name: str, data: dict) -> ModelEntry:
    fields = {k: v for k, v in data.items() if k != "name"}
    if fields.get("openvino") is not None:
        fields["openvino"] = OpenVINOEntry(**fields["openvino"])
    return ModelEntry(name=name, **fields)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"key {key!r} appears twice")
    return dict(pairs)


def _problem(manifest: Manifest) -> str:
    """What is wrong with a parsed manifest, or an empty string."""
    unknown = sorted(set(manifest.models) - set(REGISTRY))
    if unknown:
        return f"unknown models {unknown}; known: {', '.join(REGISTRY)}"
    for attr in ("file", "sha256"):
        seen: dict[str, str] = {}
        for entry in manifest.models.values():
            for value in (entry.files() if attr == "file" else entry.files().values()):
                if value in seen:
                    return f"{entry.name} and {seen[value]} have the same {attr} {value}"
                seen[value] = entry.name
    for entry in manifest.models.values():
        problem = _openvino_problem(entry)
        if problem:
            return problem
    config = manifest.ensemble
    unlisted = sorted(set(config.weights) - set(manifest.models))
    if unlisted:
        return f"weights for unlisted models {unlisted}"
    if any(not math.isfinite(w) or w < 0 for w in config.weights.values()):
        return f"ensemble weights must be finite and not negative: {config.weights}"
    if len(config.review_band) != 2:
        return f"review band must be two numbers, not {list(config.review_band)}"
    low, high = config.review_band
    if not (0 <= config.threshold <= 1 and 0 <= low <= high <= 1):
        return f"threshold {config.threshold} and review band ({low}, {high}) must lie in [0, 1], low ≤ high"
    return ""


def _openvino_problem(entry: ModelEntry) -> str:
    converted = entry.openvino
    if converted is None:
        return ""
    if converted.precision not in OPENVINO_PRECISIONS:
        return (f"{entry.name}'s OpenVINO precision {converted.precision!r} is not one of"
                f" {', '.join(OPENVINO_PRECISIONS)}")
    if converted.source_sha256 != entry.sha256:
        return (f"{entry.name}'s OpenVINO files were converted from another .keras file (sha256"
                f" {converted.source_sha256[:12]}…, the model is {entry.sha256[:12]}…): ship the models again to"
                " convert them")
    return ""


def empty_manifest() -> Manifest:
    return Manifest(models={}, ensemble=EnsembleConfig(weights={}))


def load_or_empty(models_dir: Path) -> Manifest:
    """The manifest in ``models_dir``, or an empty one when there is none yet (for training).

    Raises:
        ManifestError: A manifest that cannot be read or parsed, or one listing models that is malformed.
    """
    path = Path(models_dir) / MANIFEST_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ManifestError(f"cannot read {path}: {err.strerror or err}") from None
        except ValueError as err:
            raise ManifestError(f"malformed manifest {path}: {err}") from None
        if not isinstance(data, dict) or data.get("models"):
            return load_manifest(models_dir)
    return empty_manifest()


def save_manifest(manifest: Manifest, models_dir: Path) -> Path:
    path = Path(models_dir) / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json())
    return path


def equal_weights(names) -> dict[str, float]:
    names = list(names)
    return {n: 1.0 / len(names) for n in names}
