"""Writing Grad-CAM figures for scored images (``--heatmaps DIR``).

Grad-CAM needs TensorFlow, so it is imported when figures are drawn, not with the options.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allscan.paths import path_text
from allscan.results.types import VERDICT_ALL, Score

if TYPE_CHECKING:
    from allscan.domain.fields import FieldSet
    from allscan.scoring.pipeline import Pipeline

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


FIGURE_NAME_MAX_BYTES = 200
"""Longest figure name: most filesystems allow 255 bytes, and the atomic write's temporary name beside
it is 22 bytes longer."""


def figure_path(folder: Path, image_path: Path, sha256: str) -> Path:
    """``folder/STEM-SHA.png``: the image's name, shortened to fit a file name, then its sha256 prefix
    (which keeps names unique)."""
    suffix = f"-{sha256[:10]}.png"
    stem = path_text(Path(image_path).stem)
    while len(os.fsencode(stem + suffix)) > FIGURE_NAME_MAX_BYTES:
        stem = stem[:-1]  # whole characters, so the name stays text
    return Path(folder) / f"{stem}{suffix}"


STITCH_STEP = 4
"""Stitched maps are kept at a quarter of the rescaled image's resolution (maps are coarse anyway)."""


def stitched_maps(pipeline: "Pipeline", fields: "FieldSet") -> dict[str, np.ndarray]:
    """Each model's Grad-CAM over the whole image: its fields' maps placed where the fields lie,
    overlaps averaged, cropped to the image's own pixels and scaled to [0, 1], at
    1/:data:`STITCH_STEP` of the rescaled image's resolution."""
    from allscan.domain.tiles import FIELD_SIZE
    from allscan.models.gradcam import resize_map

    maps = pipeline.ensemble.gradcams(fields.inputs)
    height, width = (max(1, n // STITCH_STEP) for n in fields.shape)
    side = FIELD_SIZE // STITCH_STEP
    stitched = {}
    for name, cams in maps.items():
        total = np.zeros((height + side, width + side), np.float32)
        cover = np.zeros_like(total)
        for cam, box in zip(cams, fields.boxes):
            y, x = box.y // STITCH_STEP, box.x // STITCH_STEP
            total[y:y + side, x:x + side] += resize_map(cam, side, side)
            cover[y:y + side, x:x + side] += 1
        y0, x0, y1, x1 = (v // STITCH_STEP for v in fields.content)
        combined = np.divide(total, cover, out=np.zeros_like(total), where=cover > 0)[y0:max(y1, y0 + 1),
                                                                                       x0:max(x1, x0 + 1)]
        peak = combined.max()
        stitched[name] = combined / peak if peak > 0 else combined
    return stitched


def write_figure(pipeline: "Pipeline", fields: "FieldSet", display: np.ndarray, score: Score, target: Path,
                 size: tuple[int, int] | None = None) -> None:
    """Compute the image's stitched Grad-CAM and save its figure to ``target``; given the image file's
    ``size`` (width, height), the figure also shows its cells, if they were looked for."""
    from allscan.models.gradcam import ensemble_map
    from allscan.results.figures import CellView, heatmap_figure, save_png

    per_model = stitched_maps(pipeline, fields)
    height, width = display.shape[:2]
    combined = ensemble_map(per_model, pipeline.ensemble.manifest.ensemble.weights, width, height)
    cells = None
    if size is not None and score.cells is not None and fields.cells is not None:
        cells = CellView(score.cells, width / size[0], fields.cells.crops)
    save_png(heatmap_figure(display, combined, per_model, score.per_model, score.p_all, cells), target)


def write_heatmaps(pipeline: "Pipeline", fieldsets: Sequence["FieldSet"], displays: Sequence[np.ndarray],
                   paths: Sequence[Path], hashes: Sequence[str], scores: Sequence[Score], folder: Path,
                   sizes: Sequence[tuple[int, int]]) -> list[str]:
    """Save one figure per image, with its cells (see :func:`write_figure`; ``sizes`` are the image files'
    (width, height)); returns the figure paths, absolute: the results store outlives the current folder, and a
    rerun, report or workbook from another folder must find them."""
    folder = Path(os.path.abspath(folder))
    written = []
    for fields, display, path, sha, score, size in zip(fieldsets, displays, paths, hashes, scores, sizes):
        target = figure_path(folder, path, sha)
        write_figure(pipeline, fields, display, score, target, size)
        written.append(str(target))
    return written
