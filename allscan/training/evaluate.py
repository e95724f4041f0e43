"""Scoring a labelled split with the ensemble: per-model and ensemble figures, and the shortcut check."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.training.dataset import blank_box, list_split, scale_box
from allscan.models.ensemble import Ensemble, combine
from allscan.images import decode_file, resize
from allscan.training.metrics import Metrics, compute_metrics

BOX_MODES = ("blank", "raw", "swap")


@dataclass(frozen=True)
class Predictions:
    """Per-model and ensemble outputs on a labelled set."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    per_model: dict[str, np.ndarray]
    ensemble: np.ndarray
    review: np.ndarray
    verdicts: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    """The figures ``allscan evaluate`` prints and writes."""

    models: dict[str, Metrics]
    ensemble: Metrics
    predictions: Predictions

    def to_dict(self) -> dict:
        return {"models": {n: m.to_dict() for n, m in self.models.items()}, "ensemble": self.ensemble.to_dict()}


def swap_boxes(images: Sequence[np.ndarray], labels: np.ndarray, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """Paste onto each image the label box of an image of the other class (donors taken in turn)."""
    donors = {c: [i for i, y in enumerate(labels) if y == c] for c in (0, 1)}
    out = []
    turn = {0: 0, 1: 0}
    for image, label in zip(images, labels):
        other = 1 - int(label)
        if not donors[other]:
            out.append(image)
            continue
        donor = images[donors[other][turn[other] % len(donors[other])]]
        turn[other] += 1
        out.append(_paste_box(image, donor, box))
    return out


def _paste_box(image: np.ndarray, donor: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = scale_box(box, image.shape[1], image.shape[0])
    dx0, dy0, _, _ = scale_box(box, donor.shape[1], donor.shape[0])
    patch = donor[dy0 : dy0 + (y1 - y0), dx0 : dx0 + (x1 - x0)]
    out = image.copy()
    out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return out


def load_labelled(split_dir: Path, box: tuple[int, int, int, int] | None, mode: str = "blank"):
    """Decode a split's images with the label box blanked, left raw, or swapped between classes."""
    if mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {mode!r}; known: {', '.join(BOX_MODES)}")
    paths, labels = list_split(split_dir)
    images = [decode_file(p).rgb for p in paths]
    if box is not None and mode == "blank":
        images = [blank_box(im, box) for im in images]
    elif box is not None and mode == "swap":
        images = swap_boxes(images, labels, box)
    return paths, images, labels


def predict_images(ensemble: Ensemble, images: Sequence[np.ndarray], batch_size: int = 32,
                   progress: Callable[[int], None] = lambda n: None) -> dict[str, np.ndarray]:
    """Each model's probabilities of ALL for decoded images."""
    outputs: dict[str, list[np.ndarray]] = {m.name: [] for m in ensemble.members}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batches = {s: np.stack([resize(im, s) for im in chunk]) for s in ensemble.input_sizes}
        for name, p in ensemble.predict_models(batches).items():
            outputs[name].append(p)
        progress(len(chunk))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def ensemble_predictions(ensemble: Ensemble, paths, labels, per_model: dict[str, np.ndarray]) -> Predictions:
    """The ensemble's verdicts for raw member outputs; ``per_model`` of the result holds the calibrated ones."""
    config = ensemble.manifest.ensemble
    scores = [combine({n: float(p[i]) for n, p in per_model.items()}, config) for i in range(len(labels))]
    return Predictions(
        tuple(paths),
        np.asarray(labels),
        {n: np.array([s.per_model[n] for s in scores]) for n in per_model},
        np.array([s.p_all for s in scores]),
        np.array([s.review for s in scores]),
        np.array([s.verdict for s in scores]),
    )


def evaluate_predictions(ensemble: Ensemble, predictions: Predictions, intervals: bool = True) -> Evaluation:
    """Figures per model (at 0.5) and for the ensemble (at its threshold), with 95% intervals unless told not."""
    labels = predictions.labels
    models = {n: compute_metrics(labels, p, 0.5, intervals=intervals) for n, p in predictions.per_model.items()}
    combined = compute_metrics(labels, predictions.ensemble, ensemble.manifest.ensemble.threshold,
                               predictions.review, intervals=intervals)
    return Evaluation(models, combined, predictions)


def evaluate(ensemble: Ensemble, split_dir: Path, box: tuple[int, int, int, int] | None, mode: str = "blank",
             batch_size: int = 32, progress: Callable[[int], None] = lambda n: None,
             intervals: bool = True) -> Evaluation:
    """Per-model and ensemble figures on one split folder (``normal/`` and ``ALL/``)."""
    paths, images, labels = load_labelled(split_dir, box, mode)
    per_model = predict_images(ensemble, images, batch_size, progress)
    return evaluate_predictions(ensemble, ensemble_predictions(ensemble, paths, labels, per_model), intervals)


def count_flips(a: Predictions, b: Predictions) -> int:
    """How many images change verdict between two runs over the same images."""
    return int((a.verdicts != b.verdicts).sum())


@dataclass(frozen=True)
class HeatmapBoxCheck:
    """Where Grad-CAM puts its heat on ALL verdicts, relative to the dataset's label box.

    Attributes:
        images: ALL-verdict images examined.
        in_box: Images whose hottest 5% of pixels lie mostly (over half) inside the box.
        mean_fraction: Mean share of each image's hottest 5% of pixels inside the box.
        box_area_fraction: The box's share of the image (what a map blind to location would give).
    """

    images: int
    in_box: int
    mean_fraction: float
    box_area_fraction: float


def heatmap_box_check(ensemble: Ensemble, images: Sequence[np.ndarray], predictions: Predictions,
                      box: tuple[int, int, int, int], batch_size: int = 32) -> HeatmapBoxCheck:
    """Grad-CAM the ALL-verdict images and measure how much of their hottest 5% sits in ``box``."""
    from allscan.models.gradcam import ensemble_map

    chosen = [i for i, v in enumerate(predictions.verdicts) if v == "ALL"]
    weights = ensemble.manifest.ensemble.weights
    fractions = []
    area = 0.0
    for start in range(0, len(chosen), batch_size):
        idx = chosen[start : start + batch_size]
        batches = {s: np.stack([resize(images[i], s) for i in idx]) for s in ensemble.input_sizes}
        maps = ensemble.gradcams(batches)
        for k, i in enumerate(idx):
            height, width = images[i].shape[:2]
            combined = ensemble_map({n: m[k] for n, m in maps.items()}, weights, width, height)
            inside = np.zeros((height, width), dtype=bool)
            x0, y0, x1, y1 = scale_box(box, width, height)
            inside[y0:y1, x0:x1] = True
            area = inside.mean()
            hottest = combined >= np.quantile(combined, 0.95)
            fractions.append(float((hottest & inside).sum() / max(hottest.sum(), 1)))
    fractions_arr = np.asarray(fractions)
    return HeatmapBoxCheck(len(chosen), int((fractions_arr > 0.5).sum()),
                           float(fractions_arr.mean()) if len(fractions) else 0.0, float(area))
