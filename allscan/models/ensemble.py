"""The four-model ensemble: loading checked models and running their forward passes (in the chosen
runtime, :mod:`allscan.models.runtime`) and Grad-CAM (always in Keras)."""

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from allscan.models.files import check_file, check_openvino
from allscan.models.gradcam import compiled_gradcam
from allscan.models.manifest import Manifest, load_manifest
from allscan.models.runtime import (Forward, KerasForward, OpenVINOForward, choose_runtime, compile_openvino,
                                    load_keras_model, read_openvino, running_precision)


GRADCAM_BATCH = 16
"""Fields per Grad-CAM call: the gradients of a batch are held at once."""


@dataclass
class Member:
    """An ensemble member: its forward pass, loaded by :meth:`load` or on first use, and (built on
    first use, from the Keras model) its Grad-CAM.

    Attributes:
        name: Registry name.
        input_size: Square input side in pixels.
        preprocessing: Name of the function in :mod:`allscan.models.preprocessing`.
        path: The ``.keras`` file, its sha256 already checked against the manifest.
        openvino: The OpenVINO ``(.xml, .bin)`` files, checked likewise, when this member runs in
            OpenVINO; None when it runs in Keras.
        precision: The precision its OpenVINO files run at here (``int8``, ``bf16`` or ``fp32``: see
            :func:`~allscan.models.runtime.running_precision`); Keras runs float32.
    """

    name: str
    input_size: int
    preprocessing: str
    path: Path
    openvino: tuple[Path, Path] | None = None
    precision: str = "fp32"
    gradcam: Callable | None = None
    _forward: Forward | None = field(default=None, repr=False)
    _model: object | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def runtime(self) -> str:
        """What runs the forward pass, in words: ``keras`` or ``openvino`` and a precision (``openvino int8``)."""
        return "keras" if self.openvino is None else f"openvino {self.precision}"

    @property
    def loaded(self) -> bool:
        return self._forward is not None

    def load(self) -> None:
        """Load the forward pass, ready for full-speed batches; once."""
        with self._lock:
            if self._forward is None:
                if self.openvino is None:
                    self._forward = KerasForward(self.model, self.preprocessing, self.input_size)
                else:
                    self._forward = OpenVINOForward(compile_openvino(read_openvino(*self.openvino), self.precision),
                                                    self.input_size)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(ALL) ``(n,)`` and pooled features ``(n, d)`` for a uint8 batch ``(n, s, s, 3)``."""
        self.load()
        return self._forward.outputs(batch)

    @property
    def model(self):
        """The Keras model (loaded on first use where OpenVINO scores: Grad-CAM needs it)."""
        with self._lock:
            if self._model is None:
                self._model = load_keras_model(self.path)
            return self._model


class Ensemble:
    """The ensemble described by a models folder's manifest, loaded once and reused.

    Attributes:
        runtime: ``keras`` or ``openvino``: what runs every member's forward pass.
    """

    def __init__(self, manifest: Manifest, members: list[Member], models_dir: Path, runtime: str = "keras"):
        self.manifest = manifest
        self.members = members
        self.models_dir = models_dir
        self.runtime = runtime

    @classmethod
    def load(cls, models_dir: Path, load_models: bool = True, runtime: str = "auto") -> "Ensemble":
        """Check every model listed in ``models_dir/manifest.json`` against its sha256 and load it.

        With ``load_models`` False the models stay on disk until first used: for a process that only
        coordinates (the Ray engine's driver), which needs the manifest and not ~1.2 GB of models.
        ``runtime`` (:data:`allscan.models.manifest.RUNTIMES`): ``auto`` runs OpenVINO when the manifest
        lists its files for every member, Keras otherwise.

        Raises:
            ManifestError: No manifest, a model file is missing or does not match, or ``openvino``
                was asked for and its files are not listed, missing or do not match.
            ValueError: An unknown runtime.
        """
        models_dir = Path(models_dir)
        manifest = load_manifest(models_dir)
        chosen = choose_runtime(runtime, manifest)
        members = []
        for entry in manifest.models.values():
            converted = check_openvino(models_dir, entry) if chosen == "openvino" else None
            precision = running_precision(entry.openvino.precision) if converted else "fp32"
            members.append(Member(entry.name, entry.input_size, entry.preprocessing, check_file(models_dir, entry),
                                  converted, precision))
        if load_models:
            for member in members:
                member.load()
        return cls(manifest, members, models_dir, chosen)

    @property
    def digest(self) -> str:
        """The manifest's digest, joined by the runtime and the precision each member runs at when it is not
        Keras: results of one runtime or precision are never taken for another's (int8 and bfloat16 members
        answer slightly differently)."""
        if self.runtime == "keras":
            return self.manifest.digest
        key = {"models": self.manifest.digest, "runtime": self.runtime,
               "precisions": {m.name: m.precision for m in self.members}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({m.input_size for m in self.members}))

    def outputs(self, batches: Mapping[int, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each model's probabilities of ALL ``(n,)`` and pooled features ``(n, d)`` for a batch given at
        every input size (``{input_size: (n, s, s, 3) uint8}``)."""
        probabilities, features = {}, {}
        for m in self.members:
            probabilities[m.name], features[m.name] = m.outputs(batches[m.input_size])
        return probabilities, features

    def gradcams(self, batches: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model's Grad-CAM maps ``(n, h, w)`` for the ALL logit, in [0, 1] (always in Keras), computed
        :data:`GRADCAM_BATCH` fields at a time: a large image's hundreds of fields at once took gigabytes."""
        maps = {}
        for m in self.members:
            if m.gradcam is None:
                m.gradcam = compiled_gradcam(m.model, m.preprocessing, m.input_size)
            fields = np.asarray(batches[m.input_size], np.uint8)
            maps[m.name] = np.concatenate([m.gradcam(fields[i:i + GRADCAM_BATCH]).numpy()
                                           for i in range(0, max(len(fields), 1), GRADCAM_BATCH)])
        return maps
