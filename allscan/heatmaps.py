"""Writing Grad-CAM figures for scored images (``--heatmaps DIR``).

Grad-CAM needs TensorFlow, so it is imported when figures are drawn, not with the options.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allscan.results import VERDICT_ALL, Score

if TYPE_CHECKING:
    from allscan.ensemble import Ensemble

DISPLAY_MAX_SIDE = 448
"""Figures show the image at most this many pixels wide or high."""


@dataclass(frozen=True)
class HeatmapOptions:
    """Where figures go and for which images: ALL or review only, or every image with ``every``."""

    folder: Path
    every: bool = False

    def wanted(self, score: Score) -> bool:
        return self.every or score.verdict == VERDICT_ALL or score.review


def display_copy(rgb: np.ndarray) -> np.ndarray:
    """The image scaled down to :data:`DISPLAY_MAX_SIDE` for figures and thumbnails."""
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def figure_path(folder: Path, image_path: Path, sha256: str) -> Path:
    return Path(folder) / f"{Path(image_path).stem}-{sha256[:10]}.png"


def write_heatmaps(ensemble: "Ensemble", batches: dict[int, np.ndarray], displays: Sequence[np.ndarray],
                   paths: Sequence[Path], hashes: Sequence[str], scores: Sequence[Score], folder: Path) -> list[str]:
    """Compute Grad-CAM for a batch and save one figure per image; returns the figure paths."""
    from allscan.gradcam import ensemble_map
    from allscan.overlay import heatmap_figure, save_png

    maps = ensemble.gradcams(batches)
    weights = ensemble.manifest.ensemble.weights
    written = []
    for i, (display, path, sha, score) in enumerate(zip(displays, paths, hashes, scores)):
        per_model = {name: m[i] for name, m in maps.items()}
        height, width = display.shape[:2]
        combined = ensemble_map(per_model, weights, width, height)
        target = figure_path(folder, path, sha)
        save_png(heatmap_figure(display, combined, per_model, score.per_model, score.p_all), target)
        written.append(str(target))
    return written
