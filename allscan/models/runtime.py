"""The runtimes that run a member's forward pass: Keras (the reference, and the path for Grad-CAM and
training) and OpenVINO (converted when the models ship, the default for scoring where its files are listed).

Both take a uint8 batch ``(n, s, s, 3)`` and return p(ALL) ``(n,)`` and pooled features ``(n, d)``
as NumPy arrays. OpenVINO is imported only when its runtime loads, and TensorFlow only when a Keras model
is (Keras scoring, Grad-CAM, conversion), so ``import allscan`` stays light and an OpenVINO run never
pays TensorFlow's start-up time and memory.
"""

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from allscan.models.gradcam import FEATURE_LAYER
from allscan.models.manifest import RUNTIMES, Manifest, ManifestError
from allscan.models.preprocessing import get_preprocessor

OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
"""On CPUs with bfloat16 units (AVX512-BF16, AMX) OpenVINO otherwise runs float layers in bfloat16,
which moves p(ALL) and pooled features: a member runs its float layers in bfloat16 only where it shipped
as ``bf16`` (accepted by the rule in :mod:`allscan.training.convert`)."""
BF16_CONFIG = {"INFERENCE_PRECISION_HINT": "bf16"}


class Forward(Protocol):
    """A member's forward pass in one runtime."""

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(ALL) ``(n,)`` and pooled features ``(n, d)`` for a uint8 batch ``(n, s, s, 3)``."""


def choose_runtime(requested: str, manifest: Manifest) -> str:
    """The runtime to run: ``keras`` or ``openvino``.

    Raises:
        ValueError: ``requested`` is not one of :data:`~allscan.models.manifest.RUNTIMES`.
        ManifestError: ``openvino`` requested but some member has no OpenVINO files in the manifest.
    """
    check_runtime(requested)
    missing = sorted(name for name, entry in manifest.models.items() if entry.openvino is None)
    if requested == "auto":
        return "keras" if missing else "openvino"
    if requested == "openvino" and missing:
        raise ManifestError(f"the manifest lists no OpenVINO files for {', '.join(missing)}: ship the models"
                            " again (allscan ship or allscan tune) to convert them, or use the keras runtime")
    return requested


def check_runtime(requested: str) -> None:
    """Raises ValueError: ``requested`` is not one of :data:`~allscan.models.manifest.RUNTIMES`."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIMES)}")


def keras_forward(model, preprocessing: str, input_size: int) -> Callable:
    """The model's traced forward pass: uint8 batch in, preprocessing, then (p(ALL), pooled features).

    OpenVINO files are converted from this same function, so both runtimes see the same graph.
    """
    from allscan._tf import keras, tf

    preprocess = get_preprocessor(preprocessing)
    both = keras.Model(model.inputs, [model.outputs[0], model.get_layer(FEATURE_LAYER).output])

    @tf.function(input_signature=[tf.TensorSpec((None, input_size, input_size, 3), tf.uint8)], reduce_retracing=True)
    def forward(batch):
        x = preprocess(tf.cast(batch, tf.float32))
        p, features = both(x, training=False)
        return tf.reshape(p, (-1,)), tf.reshape(features, (tf.shape(features)[0], -1))

    return forward


def load_keras_model(path: Path):
    from allscan._tf import keras

    return keras.models.load_model(path, compile=False, safe_mode=True)


class KerasForward:
    """A ``.keras`` model and its traced forward pass (thread-safe, as TensorFlow functions are)."""

    def __init__(self, model, preprocessing: str, input_size: int):
        self.model = model
        self._forward = keras_forward(model, preprocessing, input_size)
        self.outputs(np.zeros((1, input_size, input_size, 3), np.uint8))  # trace now: the first batch runs at speed

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, features = self._forward(np.asarray(batch, np.uint8))
        return p.numpy(), features.numpy()


def read_openvino(xml: Path, weights: Path):
    """The ``ov.Model`` saved as ``xml`` (graph) and ``weights`` (``.bin``)."""
    return _core().read_model(str(xml), str(weights))


def compile_openvino(model, precision: str = "fp32"):
    """Compile an ``ov.Model`` for this machine's CPU at ``precision`` as :func:`running_precision` has it:
    float layers in bfloat16 for ``bf16``, float32 otherwise (int8 layers are int8 in either)."""
    config = BF16_CONFIG if running_precision(precision) == "bf16" else OPENVINO_CONFIG
    return _core().compile_model(model, "CPU", config)


def limit_threads(threads: int, runtimes: set[str]) -> None:
    """Run the models this process loads from now on in ``runtimes`` (``keras``, ``openvino``) on at most
    ``threads`` CPU threads, e.g. a Ray actor's share of a node (by default they take every core).
    TensorFlow is imported only when ``keras`` is among them."""
    if "keras" in runtimes:
        from allscan._tf import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if "openvino" in runtimes:
        _core().set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})


def bf16_supported() -> bool:
    """Whether this machine's CPU has bfloat16 units (AVX512-BF16 or AMX), by OpenVINO's account."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def running_precision(shipped: str) -> str:
    """The precision a member shipped at ``shipped`` runs at here: ``bf16`` members run float32 on a CPU
    without bfloat16 units (emulating it would be slower than float32, which the rule compared them to)."""
    return "fp32" if shipped == "bf16" and not bf16_supported() else shipped


def no_telemetry() -> None:
    """Keep OpenVINO's and NNCF's usage statistics off in this process; call it before importing either.

    Importing ``openvino`` sends usage events (one for the import, one more beside Keras 3) to Google
    Analytics and writes a client ID under ``~/intel`` unless the user opted out with OpenVINO's own tool,
    and NNCF does the same: a lab's screening tool sends nothing anywhere. Both fall back to no telemetry
    when their telemetry package cannot be imported, which an entry of None in ``sys.modules`` makes so
    (unless the process imported it before).
    """
    sys.modules.setdefault("openvino_telemetry", None)


_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    """One OpenVINO core per process (it owns the CPU plugin and its thread pool)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            no_telemetry()
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


class OpenVINOForward:
    """A compiled OpenVINO model: one inference request per calling thread (a request is not thread-safe)."""

    def __init__(self, compiled, input_size: int):
        self._compiled = compiled
        self._local = threading.local()
        self.outputs(np.zeros((1, input_size, input_size, 3), np.uint8))  # first inference allocates: do it now

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer([np.ascontiguousarray(batch, np.uint8)])
        return result[0].copy(), result[1].copy()  # the request reuses its output buffers on the next call
