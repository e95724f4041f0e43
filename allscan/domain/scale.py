"""Physical scale: a smear image's red-cell diameter in pixels, by granulometry.

Red cells are the most numerous objects in any peripheral smear field, so their
size is the field's ruler. The estimate is the mode of the morphological pattern
spectrum (Matheron's granulometry, as in Serra 1982 and Dougherty & Pelz 1991) of
the cell mask: the mask is opened with discs of growing radius and the radius at
which most cell area disappears is the typical cell radius. A few large white
cells do not move the mode; touching red cells are separated at their necks by the
openings. Openings are computed exactly with two Euclidean distance transforms.
"""

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

ANALYSIS_SIDE = 384
"""The image is analysed at this longest side (or its own, if smaller): fast and ample for cells
that are 6-60 pixels across at that size."""

MIN_RADIUS, MAX_RADIUS = 2, 48
MIN_FOREGROUND, MAX_FOREGROUND = 0.03, 0.9
MIN_CELLS = 3.0


@dataclass(frozen=True)
class ScaleEstimate:
    """A red-cell size estimate.

    Attributes:
        diameter: Typical red-cell diameter in the image's own pixels, or None when no
            estimate could be made.
        reason: Why there is no estimate (empty when there is one).
        foreground: Fraction of the analysed image covered by cells.
        mask: The cell mask at :data:`ANALYSIS_SIDE` (reused to find background fields).
    """

    diameter: float | None
    reason: str = ""
    foreground: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)


def cell_mask(rgb: np.ndarray) -> np.ndarray:
    """Everything darker than the bright background in the green channel, central pallor filled.

    The background threshold is the upper one of a three-class Otsu split (background,
    red cells, white-cell nuclei): a two-class split separates the dark nuclei from
    everything else on pale smears and loses the red cells.
    """
    green = flatten_background(rgb[..., 1])
    _, upper = otsu_thresholds_3(green)
    return ndimage.binary_fill_holes(green < upper)


ILLUMINATION_SIGMA = 0.25
"""Width of the illumination estimate, as a fraction of the image's longest side: far wider than
any cell, so it follows vignetting and not the cells."""


ILLUMINATION_GRID = 64
"""The illumination is estimated on a copy reduced to about this longest side, then enlarged: it is
smooth at that scale, and blurring the full image with so wide a kernel cost more than the rest of
the scale estimate."""


def flatten_background(channel: np.ndarray) -> np.ndarray:
    """Divide out uneven illumination (microscope vignetting) by a wide Gaussian blur of the channel."""
    values = channel.astype(np.float32)
    height, width = channel.shape
    step = max(1.0, max(height, width) / ILLUMINATION_GRID)
    small = Image.fromarray(values).resize(
        (max(1, round(width / step)), max(1, round(height / step))), Image.BOX)
    blurred = ndimage.gaussian_filter(np.asarray(small), ILLUMINATION_SIGMA * max(small.size), mode="reflect")
    level = np.asarray(Image.fromarray(blurred).resize((width, height), Image.BILINEAR))
    flat = values / np.maximum(level, 1.0) * float(level.mean())
    return np.clip(flat, 0, 255).astype(np.uint8)


def otsu_thresholds_3(values: np.ndarray) -> tuple[int, int]:
    """The two thresholds of a three-class Otsu (1979) split of 8-bit values (classes ``< t1``,
    ``t1..t2-1``, ``>= t2``), by exhaustive search over the histogram."""
    hist = np.bincount(values.reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    count = np.concatenate([[0.0], np.cumsum(hist)])
    mass = np.concatenate([[0.0], np.cumsum(hist * levels)])
    t1, t2 = np.meshgrid(np.arange(1, 255), np.arange(2, 256), indexing="ij")
    valid = t2 > t1
    between = np.zeros(t1.shape)
    for lo, hi in ((np.zeros_like(t1), t1), (t1, t2), (t2, np.full_like(t2, 256))):
        n = count[hi] - count[lo]
        between += np.where(n > 0, (mass[hi] - mass[lo]) ** 2 / np.maximum(n, 1), 0.0)
    between[~valid] = -1
    i, j = np.unravel_index(int(np.argmax(between)), between.shape)
    return int(t1[i, j]), int(t2[i, j])


def pattern_spectrum(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Area of the mask's opening by a disc of each radius (non-increasing in radius)."""
    inside = ndimage.distance_transform_edt(mask)
    areas = []
    for radius in radii:
        centres = inside >= radius
        if not centres.any():
            areas += [0] * (len(radii) - len(areas))  # larger discs fit nowhere either
            break
        reach = ndimage.distance_transform_edt(~centres)
        areas.append(int(np.count_nonzero(reach < radius)))
    return np.asarray(areas, dtype=np.float64)


def analysis_copy(rgb: np.ndarray, side: int = ANALYSIS_SIDE) -> tuple[np.ndarray, float]:
    """The image reduced to ``side`` on its long side, and the factor from its pixels to the original's."""
    height, width = rgb.shape[:2]
    factor = max(height, width) / side
    if factor <= 1:
        return rgb, 1.0
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX), dtype=np.uint8)
    return small, width / size[0]


FINE_DIAMETER = 12.0
"""Cells smaller than this at the analysis size are measured again at a finer resolution…"""
FINE_TARGET = 24.0
"""…one where they are about this many pixels across…"""
MAX_ANALYSIS_SIDE = 1536
"""…but never larger than this."""


def estimate_diameter(rgb: np.ndarray, reduced: tuple[np.ndarray, float] | None = None) -> ScaleEstimate:
    """Estimate the typical red-cell diameter of a smear image, in its own pixels.

    A large photo of small cells is measured a second time at a finer resolution, as
    granulometry needs cells several pixels across.

    Args:
        rgb: The image.
        reduced: Its :func:`analysis_copy` at :data:`ANALYSIS_SIDE`, if the caller already made it.
    """
    estimate, factor = _estimate_at(rgb, ANALYSIS_SIDE, reduced)
    if estimate.diameter is not None and factor > 1 and estimate.diameter / factor < FINE_DIAMETER:
        side = int(min(MAX_ANALYSIS_SIDE, ANALYSIS_SIDE * FINE_TARGET * factor / estimate.diameter))
        finer, _ = _estimate_at(rgb, side)
        if finer.diameter is not None:
            return replace(finer, mask=estimate.mask)
    return estimate


def _estimate_at(rgb: np.ndarray, side: int, reduced: tuple[np.ndarray, float] | None = None,
                 ) -> tuple[ScaleEstimate, float]:
    small, factor = analysis_copy(rgb, side) if reduced is None else reduced
    mask = cell_mask(small)
    foreground = float(mask.mean())
    if not MIN_FOREGROUND <= foreground <= MAX_FOREGROUND:
        return ScaleEstimate(None, f"cells cover {foreground:.0%} of the image: too little contrast to measure",
                             foreground, mask), factor
    radii = np.arange(MIN_RADIUS, MAX_RADIUS + 1, dtype=np.float64)
    areas = pattern_spectrum(mask, radii)
    lost = areas[:-1] - areas[1:]
    peak = int(np.argmax(np.convolve(lost, [0.25, 0.5, 0.25], mode="same")))
    if peak == len(lost) - 1 or lost[peak] <= 0:
        return ScaleEstimate(None, "no typical cell size in range", foreground, mask), factor
    window = slice(max(0, peak - 1), peak + 2)
    radius = float(np.sum(radii[:-1][window] * lost[window]) / np.sum(lost[window])) + 0.5
    near = np.abs(radii[:-1] - radius) <= 0.3 * radius
    cells = lost[near].sum() / (np.pi * radius ** 2)
    if cells < MIN_CELLS:
        return ScaleEstimate(None, f"too few cells to measure ({cells:.0f})", foreground, mask), factor
    return ScaleEstimate(2 * radius * factor, "", foreground, mask), factor
