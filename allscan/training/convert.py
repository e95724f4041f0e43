"""Converting shipped models to OpenVINO, int8 or bfloat16 only where it keeps the answers.

Each member's Keras forward pass (uint8 in, preprocessing, model, then p(ALL) and pooled features:
:func:`allscan.models.runtime.keras_forward`) is converted to OpenVINO (float32, checked against
Keras on the validation split), then quantised to int8 by NNCF post-training quantisation on
training fields (label box blanked, as the models were trained). The int8 model ships only when,
on the validation split, :func:`acceptable` holds against float32. Where it does not, and the
converting machine's CPU has bfloat16 units, the float32 files run with their float layers in
bfloat16 are put to the same rule, and ship as ``bf16`` if it holds (they run float32 on a CPU
without such units). Otherwise the member ships float32. Files are written beside the ``.keras``
file and recorded in the manifest with their sha256 and the sha256 of the ``.keras`` they came
from. Runs when models ship, never on a user's machine.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from allscan.models.files import check_file
from allscan.models.manifest import ModelEntry, OpenVINOEntry, load_manifest, save_manifest, sha256_file
from allscan.models.runtime import (KerasForward, OpenVINOForward, bf16_supported, compile_openvino, keras_forward,
                                    load_keras_model, no_telemetry, read_openvino)
from allscan.training.dataset import list_split, load_images

CALIBRATION_FIELDS = 300
"""Training fields NNCF calibrates each member's activation ranges on."""
MIN_VERDICT_AGREEMENT = 0.995
"""int8 or bfloat16 ships only if its verdicts (raw p(ALL) at 0.5) match float32 on at least this share of
validation fields…"""
MAX_AUC_DROP = 0.001
"""…and its validation ROC AUC is at most this much below float32's."""
FP32_TOLERANCE = 1e-4
"""Largest |Δp(ALL)| allowed between the float32 conversion and Keras on validation: a larger one is a
conversion fault, never shipped."""
BATCH = 32
SEED = 0


class ConversionError(RuntimeError):
    """The OpenVINO conversion does not reproduce the Keras model."""


@dataclass(frozen=True)
class PrecisionCheck:
    """A lower-precision candidate (int8 or bfloat16) against float32 on the validation split.

    Attributes:
        precision: The candidate's precision.
        fields: Validation fields compared.
        verdict_agreement: Share of fields whose raw p(ALL) lies on the same side of 0.5 in both.
        roc_auc_fp32: Float32's ROC AUC.
        roc_auc: The candidate's ROC AUC.
        max_abs_dp: Largest |p_candidate - p_fp32|.
        accepted: Whether the candidate may ship (:func:`acceptable`).
    """

    precision: str
    fields: int
    verdict_agreement: float
    roc_auc_fp32: float
    roc_auc: float
    max_abs_dp: float
    accepted: bool

    def record(self) -> dict:
        """The figures as the manifest records them (the candidate's AUC under ``roc_auc_<precision>``)."""
        return {"fields": self.fields, "verdict_agreement": self.verdict_agreement,
                "roc_auc_fp32": self.roc_auc_fp32, f"roc_auc_{self.precision}": self.roc_auc,
                "max_abs_dp": self.max_abs_dp, "accepted": self.accepted}


def acceptable(verdict_agreement: float, roc_auc_fp32: float, roc_auc: float) -> bool:
    """The shipping rule: a candidate keeps ≥ 99.5% of float32's verdicts and loses ≤ 0.001 of its ROC AUC."""
    # rounded: 0.990 - 0.989 is 0.0010000000000000009 in floating point, and the bound is inclusive
    return verdict_agreement >= MIN_VERDICT_AGREEMENT and round(roc_auc_fp32 - roc_auc, 12) <= MAX_AUC_DROP


def precision_check(precision: str, labels: np.ndarray, p_fp32: np.ndarray, p: np.ndarray) -> PrecisionCheck:
    """Compare a ``precision`` candidate's validation probabilities ``p`` with float32's (labels 1 = ALL)."""
    agreement = float(np.mean((p_fp32 >= 0.5) == (p >= 0.5)))
    auc_fp32, auc = float(roc_auc_score(labels, p_fp32)), float(roc_auc_score(labels, p))
    return PrecisionCheck(precision, len(labels), agreement, auc_fp32, auc, float(np.max(np.abs(p - p_fp32))),
                          acceptable(agreement, auc_fp32, auc))


def to_openvino(model, preprocessing: str, input_size: int):
    """The ``ov.Model`` of the member's forward pass: uint8 ``(n, s, s, 3)`` in (any n), p(ALL) and
    pooled features out."""
    no_telemetry()
    import openvino as ov

    with _interrupts_unwrapped():
        converted = ov.convert_model(keras_forward(model, preprocessing, input_size))
    # Some graphs (EfficientNet-B3) come out with internal activations as extra outputs: keep the two.
    results = converted.get_results()[:2]
    if [len(r.get_output_partial_shape(0)) for r in results] != [1, 2]:
        raise ConversionError(f"{model.name}: the converted model's first outputs are not p(ALL) and features")
    return ov.Model(results, converted.get_parameters(), model.name)


@contextmanager
def _interrupts_unwrapped() -> Iterator[None]:
    """Raise a Ctrl-C as the ``KeyboardInterrupt`` it was when OpenVINO's converter hands it back wrapped.

    The converter calls TensorFlow's Python tracing from C++; an interrupt there returns through C++ as
    another exception (``OpConversionFailure``, ``RuntimeError``) whose message or chain names it.
    """
    try:
        yield
    except Exception as exc:
        if _wraps_interrupt(exc):
            raise KeyboardInterrupt from exc
        raise


def _wraps_interrupt(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def quantise(ov_model, fields: np.ndarray):
    """NNCF post-training quantisation of ``ov_model`` (left as it is) calibrated on ``fields`` (uint8)."""
    no_telemetry()
    import nncf

    dataset = nncf.Dataset([fields[i:i + 1] for i in range(len(fields))])
    return nncf.quantize(ov_model.clone(), dataset, subset_size=len(fields))


def convert_member(models_dir: Path, entry: ModelEntry, fields: np.ndarray, labels: np.ndarray,
                   calibration: np.ndarray) -> OpenVINOEntry:
    """Convert one member, quantise it, apply the rule on validation (to int8, then where int8 is refused to
    bfloat16) and write the files that ship into ``models_dir``.

    Args:
        fields: Validation inputs at the member's input size, uint8 ``(n, s, s, 3)``, and ``labels`` theirs.
        calibration: Training inputs likewise, to calibrate int8 on.

    Raises:
        ConversionError: Float32 OpenVINO does not reproduce Keras on validation.
    """
    no_telemetry()
    import openvino as ov

    models_dir = Path(models_dir)
    model = load_keras_model(check_file(models_dir, entry))
    p_keras = _probabilities(KerasForward(model, entry.preprocessing, entry.input_size), fields)
    fp32 = to_openvino(model, entry.preprocessing, entry.input_size)
    int8 = quantise(fp32, calibration)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".convert-") as tmp:
        p = {}
        for precision, candidate in (("fp32", fp32), ("int8", int8)):
            xml = Path(tmp) / precision / f"{entry.name}.xml"
            xml.parent.mkdir()
            # not stored as float16: constants folded in conversion (EfficientNet's) lose too much (Δp 0.006)
            ov.save_model(candidate, xml, compress_to_fp16=False)
            p[precision] = _shipped_probabilities(xml, precision, entry.input_size, fields)
        drift = float(np.max(np.abs(p["fp32"] - p_keras)))
        if drift > FP32_TOLERANCE:
            raise ConversionError(f"{entry.name}: float32 OpenVINO differs from Keras by up to {drift:.2g} in p(ALL)")
        int8_figures = precision_check("int8", labels, p["fp32"], p["int8"])
        bf16_figures = None
        if not int8_figures.accepted and bf16_supported():
            xml = Path(tmp) / "fp32" / f"{entry.name}.xml"
            bf16_figures = precision_check("bf16", labels, p["fp32"],
                                           _shipped_probabilities(xml, "bf16", entry.input_size, fields))
        precision = ("int8" if int8_figures.accepted else
                     "bf16" if bf16_figures is not None and bf16_figures.accepted else "fp32")
        targets = {}
        for suffix in (".xml", ".bin"):
            target = models_dir / f"{entry.name}{suffix}"
            os.replace(Path(tmp) / ("int8" if precision == "int8" else "fp32") / target.name, target)
            targets[suffix] = target
    figures = int8_figures.record() | {"split": "val", "calibration_fields": len(calibration),
                                       "fp32_max_abs_dp_vs_keras": drift}
    bf16_record = bf16_figures.record() | {"split": "val"} if bf16_figures is not None else {}
    return OpenVINOEntry(targets[".xml"].name, sha256_file(targets[".xml"]), targets[".bin"].name,
                         sha256_file(targets[".bin"]), entry.sha256, precision, figures, bf16_record)


def convert_models(models_dir: Path, data_dir: Path, names: list[str] | None = None) -> list[str]:
    """Convert the members of ``models_dir`` that have no OpenVINO files (or those in ``names``) and record
    them in its manifest; the names converted.

    Raises:
        ConversionError: A member's float32 conversion does not reproduce Keras.
    """
    models_dir = Path(models_dir)
    manifest = load_manifest(models_dir)
    todo = names if names is not None else [n for n, e in manifest.models.items() if e.openvino is None]
    if not todo:
        return []
    val_paths, labels = list_split(Path(data_dir) / "val")
    train_paths, _ = list_split(Path(data_dir) / "train")
    train = [train_paths[i] for i in calibration_sample(len(train_paths))]
    box = manifest.blank_box
    for name in todo:
        entry = manifest.models[name]
        converted = convert_member(models_dir, entry, load_images(val_paths, entry.input_size, box), labels,
                                   load_images(train, entry.input_size, box))
        manifest = manifest.with_model(replace(entry, openvino=converted))
        save_manifest(manifest, models_dir)
    _remove_strays(models_dir)
    return list(todo)


def calibration_sample(count: int) -> np.ndarray:
    """Which of ``count`` training inputs int8 is calibrated on: :data:`CALIBRATION_FIELDS` of them, drawn
    with a fixed seed, in order."""
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(count, min(CALIBRATION_FIELDS, count), replace=False))


def _remove_strays(models_dir: Path) -> None:
    """Temporary folders a cut conversion left behind."""
    for stray in models_dir.glob(".convert-*"):
        shutil.rmtree(stray, ignore_errors=True)


def _shipped_probabilities(xml: Path, precision: str, input_size: int, fields: np.ndarray) -> np.ndarray:
    """p(ALL) of the files as read back from disk and run at ``precision``: exactly what would ship."""
    compiled = compile_openvino(read_openvino(xml, xml.with_suffix(".bin")), precision)
    return _probabilities(OpenVINOForward(compiled, input_size), fields)


def _probabilities(forward, fields: np.ndarray) -> np.ndarray:
    return np.concatenate([forward.outputs(fields[i:i + BATCH])[0] for i in range(0, len(fields), BATCH)])
