"""The four-model ensemble: loading checked models, batched compiled inference, the soft vote."""

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from allscan._tf import keras, tf
from allscan.models.calibration import weighted_mean
from allscan.models.manifest import EnsembleConfig, Manifest, load_manifest
from allscan.models.files import check_file
from allscan.models.preprocessing import get_preprocessor
from allscan.results.types import VERDICT_ALL, VERDICT_NORMAL, Score


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


def combine(per_model: Mapping[str, float], config: EnsembleConfig) -> Score:
    """Calibrate, take the weighted soft vote, calibrate it; verdict by threshold, review when uncertain.

    Each member's output goes through its Platt scaling, the weighted mean of those
    calibrated probabilities through the ensemble's; the per-model probabilities
    reported are the calibrated ones. ``agreement`` counts every model's vote;
    disagreement (for review) is among the models that carry weight, so a member tuned
    out of the vote cannot flag images on its own.
    """
    calibrated = {name: float(config.calibration.member(name, p)) for name, p in per_model.items()}
    p_all = float(config.calibration.ensemble.apply(weighted_mean(calibrated, config.weights)))
    votes = [p >= config.threshold for p in calibrated.values()]
    agreement = int(sum(votes))
    low, high = config.review_band
    weighted_votes = [v for name, v in zip(calibrated, votes) if config.weights.get(name, 0.0) > 0] or votes
    disagree = 0 < sum(weighted_votes) < len(weighted_votes)
    review = bool(low <= p_all < high or disagree)
    verdict = VERDICT_ALL if p_all >= config.threshold else VERDICT_NORMAL
    return Score(p_all, verdict, review, agreement, calibrated)


class Ensemble:
    """The ensemble described by a models folder's manifest, loaded once and reused."""

    def __init__(self, manifest: Manifest, members: list[Member], models_dir: Path, domain=None):
        self.manifest = manifest
        self.members = members
        self.models_dir = models_dir
        self.domain = domain
        """The :class:`~allscan.domain.reference.DomainReference` shipped with the models, if any."""

    @classmethod
    def load(cls, models_dir: Path, with_domain: bool = True, load_models: bool = True) -> "Ensemble":
        """Check every model listed in ``models_dir/manifest.json`` against its sha256 and load it, and
        the domain reference recorded there (unless ``with_domain`` is False, as when refitting it).

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
        domain = None
        if manifest.domain and with_domain:
            from allscan.domain.reference import DomainReference

            path = models_dir / manifest.domain["file"]
            domain = DomainReference.load(path, manifest.domain["sha256"])
            domain.check_models({name: entry.sha256 for name, entry in sorted(manifest.models.items())}, path)
        return cls(manifest, members, models_dir, domain)

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({m.input_size for m in self.members}))

    def predict_models(self, batches: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model's probabilities of ALL for a batch given at every input size."""
        return self.predict_with_features(batches)[0]

    def predict_with_features(self, batches: Mapping[int, np.ndarray]
                              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each model's probabilities of ALL ``(n,)`` and pooled features ``(n, d)`` for a batch."""
        probabilities, features = {}, {}
        for m in self.members:
            p, f = m.forward(tf.constant(batches[m.input_size]))
            probabilities[m.name], features[m.name] = p.numpy(), f.numpy()
        return probabilities, features

    def gradcams(self, batches: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model's Grad-CAM maps ``(n, h, w)`` for the ALL logit, in [0, 1]."""
        from allscan.models.gradcam import compiled_gradcam

        maps = {}
        for m in self.members:
            if m.gradcam is None:
                m.gradcam = compiled_gradcam(m.model, m.preprocessing, m.input_size)
            maps[m.name] = m.gradcam(tf.constant(batches[m.input_size])).numpy()
        return maps

    def score(self, batches: Mapping[int, np.ndarray]) -> list[Score]:
        """Ensemble scores for one batch (``{input_size: (n, s, s, 3) uint8}``)."""
        per_model = self.predict_models(batches)
        n = len(next(iter(per_model.values())))
        config = self.manifest.ensemble
        return [combine({name: float(p[i]) for name, p in per_model.items()}, config) for i in range(n)]
