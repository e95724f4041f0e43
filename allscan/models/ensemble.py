"""The four-model ensemble: loading checked models and running their compiled forward passes and Grad-CAM."""

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from allscan._tf import keras, tf
from allscan.models.manifest import Manifest, load_manifest
from allscan.models.files import check_file
from allscan.models.gradcam import compiled_gradcam
from allscan.models.preprocessing import get_preprocessor


@dataclass
class Member:
    """An ensemble member: its model and compiled forward pass, loaded by :meth:`load` or on first
    use, and (built on first use) its Grad-CAM.

    Attributes:
        name: Registry name.
        input_size: Square input side in pixels.
        preprocessing: Name of the function in :mod:`allscan.models.preprocessing`.
        path: The model file, its sha256 already checked against the manifest.
    """

    name: str
    input_size: int
    preprocessing: str
    path: Path
    gradcam: Callable | None = None
    _loaded: tuple | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> None:
        """Load the model and trace its forward pass (so the first batch runs at full speed); once."""
        with self._lock:
            if self._loaded is None:
                model = keras.models.load_model(self.path, compile=False, safe_mode=True)
                forward = _compiled_forward(model, get_preprocessor(self.preprocessing), self.input_size)
                forward(tf.zeros((1, self.input_size, self.input_size, 3), tf.uint8))
                self._loaded = (model, forward)

    @property
    def model(self):
        self.load()
        return self._loaded[0]

    @property
    def forward(self) -> Callable:
        self.load()
        return self._loaded[1]


FEATURE_LAYER = "pool"
"""The pooled-features layer every registry architecture names so: the penultimate representation
used by the out-of-domain guard and by site heads."""


def _compiled_forward(model, preprocess: Callable, input_size: int) -> Callable:
    """The model's forward pass returning (p(ALL), pooled features) for a uint8 batch."""
    both = keras.Model(model.inputs, [model.outputs[0], model.get_layer(FEATURE_LAYER).output])

    @tf.function(input_signature=[tf.TensorSpec((None, input_size, input_size, 3), tf.uint8)], reduce_retracing=True)
    def forward(batch):
        x = preprocess(tf.cast(batch, tf.float32))
        p, features = both(x, training=False)
        return tf.reshape(p, (-1,)), tf.reshape(features, (tf.shape(features)[0], -1))

    return forward


class Ensemble:
    """The ensemble described by a models folder's manifest, loaded once and reused."""

    def __init__(self, manifest: Manifest, members: list[Member], models_dir: Path):
        self.manifest = manifest
        self.members = members
        self.models_dir = models_dir

    @classmethod
    def load(cls, models_dir: Path, load_models: bool = True) -> "Ensemble":
        """Check every model listed in ``models_dir/manifest.json`` against its sha256 and load it.

        With ``load_models`` False the models stay on disk until first used: for a process that only
        coordinates (the Ray engine's driver), which needs the manifest and not ~1.2 GB of models.

        Raises:
            ManifestError: No manifest, or a model file is missing or does not match.
        """
        models_dir = Path(models_dir)
        manifest = load_manifest(models_dir)
        members = [Member(entry.name, entry.input_size, entry.preprocessing, check_file(models_dir, entry))
                   for entry in manifest.models.values()]
        if load_models:
            for member in members:
                member.load()
        return cls(manifest, members, models_dir)

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({m.input_size for m in self.members}))

    def outputs(self, batches: Mapping[int, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each model's probabilities of ALL ``(n,)`` and pooled features ``(n, d)`` for a batch given at
        every input size (``{input_size: (n, s, s, 3) uint8}``)."""
        probabilities, features = {}, {}
        for m in self.members:
            p, f = m.forward(tf.constant(batches[m.input_size]))
            probabilities[m.name], features[m.name] = p.numpy(), f.numpy()
        return probabilities, features

    def gradcams(self, batches: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model's Grad-CAM maps ``(n, h, w)`` for the ALL logit, in [0, 1]."""
        maps = {}
        for m in self.members:
            if m.gradcam is None:
                m.gradcam = compiled_gradcam(m.model, m.preprocessing, m.input_size)
            maps[m.name] = m.gradcam(tf.constant(batches[m.input_size])).numpy()
        return maps
