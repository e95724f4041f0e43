"""Scoring a labelled split with the ensemble: per-model and ensemble figures, and the shortcut check.

Images go through the scoring pipeline (:class:`~allscan.scoring.pipeline.Pipeline`), the same
path as ``allscan predict``: fields, models, vote and guard.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from allscan.images import resize
from allscan.results.types import CellFindings
from allscan.scoring.pipeline import Pipeline
from allscan.training.cell_evaluate import FieldCellFigures, field_figures
from allscan.training.dataset import blank_box, list_split, read_all, scale_box
from allscan.training.metrics import Metrics, compute_metrics, undefined_as_none

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
    cells: tuple[CellFindings | None, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """The figures ``allscan evaluate`` prints and writes."""

    models: dict[str, Metrics]
    ensemble: Metrics
    predictions: Predictions
    cells: FieldCellFigures | None = None

    def to_dict(self) -> dict:
        figures = {"models": {n: m.to_dict() for n, m in self.models.items()}, "ensemble": self.ensemble.to_dict()}
        return figures | ({"cells": undefined_as_none(self.cells.to_dict())} if self.cells is not None else {})


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
    """Decode a split's images with the label box blanked, left raw, or swapped between classes.

    Raises:
        DatasetError: The split holds no images, or some cannot be read (each is named).
    """
    if mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {mode!r}; known: {', '.join(BOX_MODES)}")
    paths, labels = list_split(split_dir)
    images = read_all(paths, lambda rgb: rgb)
    if box is not None and mode == "blank":
        images = [blank_box(im, box) for im in images]
    elif box is not None and mode == "swap":
        images = swap_boxes(images, labels, box)
    return paths, images, labels


def split_probabilities(pipeline: Pipeline, split_dir: Path, box: tuple[int, int, int, int] | None,
                        batch_size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each model's uncalibrated p(ALL) per image of a split (label box blanked), and the labels:
    what calibration and the operating point are fitted on."""
    _, images, labels = load_labelled(split_dir, box, "blank")
    parts = [pipeline.member_probabilities([pipeline.fields(im) for im in images[start:start + batch_size]],
                                           batch_size)
             for start in range(0, len(images), batch_size)]
    names = parts[0].keys() if parts else ()
    return {n: np.concatenate([part[n] for part in parts]) for n in names}, labels


def predictions(pipeline: Pipeline, paths, images: Sequence[np.ndarray], labels, batch_size: int = 32) -> Predictions:
    """Score decoded images through the pipeline; ``per_model`` holds the calibrated probabilities."""
    scores = []
    for start in range(0, len(images), batch_size):
        scores += pipeline.score([pipeline.fields(im) for im in images[start:start + batch_size]], batch_size)
    names = list(scores[0].per_model) if scores else []
    return Predictions(
        tuple(paths),
        np.asarray(labels),
        {n: np.array([s.per_model[n] for s in scores]) for n in names},
        np.array([s.p_all for s in scores]),
        np.array([s.review for s in scores]),
        np.array([s.verdict for s in scores]),
        tuple(s.cells for s in scores),
    )


def evaluate_predictions(pipeline: Pipeline, predictions: Predictions, intervals: bool = True) -> Evaluation:
    """Figures per model (at 0.5) and for the ensemble (at its threshold), with 95% intervals unless told not."""
    labels = predictions.labels
    models = {n: compute_metrics(labels, p, 0.5, intervals=intervals) for n, p in predictions.per_model.items()}
    combined = compute_metrics(labels, predictions.ensemble, pipeline.config.threshold, predictions.review,
                               intervals=intervals)
    return Evaluation(models, combined, predictions, cell_figures(predictions))


def cell_figures(predictions: Predictions) -> FieldCellFigures | None:
    """The cell classifier's field-level figures (:mod:`allscan.training.cell_evaluate`), when cells were judged."""
    found = predictions.cells
    if not found or any(f is None for f in found):
        return None
    p = np.array([c.p_blast for f in found for c in f.cells])
    field = np.array([i for i, f in enumerate(found) for _ in f.cells], dtype=int)
    return field_figures(p, field, predictions.labels, found[0].threshold)


def evaluate(pipeline: Pipeline, split_dir: Path, box: tuple[int, int, int, int] | None, mode: str = "blank",
             batch_size: int = 32, intervals: bool = True) -> Evaluation:
    """Per-model and ensemble figures on one split folder (``normal/`` and ``ALL/``)."""
    paths, images, labels = load_labelled(split_dir, box, mode)
    return evaluate_predictions(pipeline, predictions(pipeline, paths, images, labels, batch_size), intervals)


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


def heatmap_box_check(pipeline: Pipeline, images: Sequence[np.ndarray], predictions: Predictions,
                      box: tuple[int, int, int, int], batch_size: int = 32) -> HeatmapBoxCheck:
    """Grad-CAM the ALL-verdict images and measure how much of their hottest 5% sits in ``box``."""
    from allscan.models.gradcam import ensemble_map

    ensemble = pipeline.ensemble
    chosen = [i for i, v in enumerate(predictions.verdicts) if v == "ALL"]
    weights = pipeline.config.weights
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


@dataclass(frozen=True)
class ShortcutCheck:
    """Whether the ensemble reads the dataset's label box: verdicts with the box raw and swapped between
    classes, the flips between them, and where Grad-CAM puts its heat."""

    raw: Evaluation
    swapped: Evaluation
    flips_raw_to_swap: int
    flips_blank_to_raw: int
    heatmaps: HeatmapBoxCheck

    def to_dict(self) -> dict:
        n = self.raw.ensemble.n
        return {
            "raw": self.raw.to_dict()["ensemble"],
            "swap": self.swapped.to_dict()["ensemble"],
            "flips_raw_to_swap": self.flips_raw_to_swap,
            "flips_blank_to_raw": self.flips_blank_to_raw,
            "flip_share": self.flips_raw_to_swap / n if n else 0.0,
            "heatmap_in_label_box": asdict(self.heatmaps),
        }


def shortcut_check(pipeline: Pipeline, split_dir: Path, box: tuple[int, int, int, int],
                   blanked: Evaluation) -> ShortcutCheck:
    """Score the split with the label box raw and swapped, count flips against each other and against
    ``blanked`` (the split's evaluation with the box blanked), and Grad-CAM the raw ALL verdicts."""
    paths, raw_images, labels = load_labelled(split_dir, box, "raw")  # decoded once: scored, then Grad-CAM'd
    raw = evaluate_predictions(pipeline, predictions(pipeline, paths, raw_images, labels))
    swapped = evaluate(pipeline, split_dir, box, "swap")
    return ShortcutCheck(raw, swapped, count_flips(raw.predictions, swapped.predictions),
                         count_flips(blanked.predictions, raw.predictions),
                         heatmap_box_check(pipeline, raw_images, raw.predictions, box))
