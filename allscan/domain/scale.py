"""Physical scale: a smear image's red-cell diameter in pixels, by granulometry.

Red cells are the most numerous objects in any peripheral smear field, so their
size is the field's ruler. The estimate is the mode of the morphological pattern
spectrum (Matheron's granulometry, as in Serra 1982 and Dougherty & Pelz 1991) of
the cell mask: the mask is opened with discs of growing radius and the radius at
which most cell area disappears is the typical cell radius. A few large white
cells do not move the mode; touching red cells are separated at their necks by the
openings. Openings are exact: the pixels at least r inside the mask (by its Euclidean
distance transform) are the disc centres that fit, and the opening is the set of pixels
closer than r to one of them.

The filtering and morphology run in OpenCV (with scipy's, this estimate cost more than the
four models on a field), with the same results; the box-filter reductions stay PIL's, which
OpenCV's area resize does not reproduce at fractional steps.
"""

from dataclasses import dataclass, field, replace
from functools import partial

import cv2
import numpy as np
from PIL import Image

ANALYSIS_SIDE = 384
"""The image is analysed at this longest side (or its own, if smaller): fast and ample for cells
that are 6-60 pixels across at that size."""

MIN_RADIUS, MAX_RADIUS = 2, 48
RADII = np.arange(MIN_RADIUS, MAX_RADIUS + 1, dtype=np.float64)
"""The radii of the discs the mask is opened with."""
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
        green: The green channel it was made from, flattened by :func:`flatten_background` (reused
            by the cell finder).
        lost: The pattern spectrum: mask area lost from the opening by each radius of :data:`RADII` to
            the next, in analysis pixels (see :func:`diameter_between`).
        factor: Image pixels per analysis pixel.
    """

    diameter: float | None
    reason: str = ""
    foreground: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    green: np.ndarray | None = field(default=None, repr=False, compare=False)
    lost: np.ndarray | None = field(default=None, repr=False, compare=False)
    factor: float = 1.0


def cell_mask(rgb: np.ndarray) -> np.ndarray:
    """Everything darker than the bright background in the green channel, central pallor filled.

    The background threshold is the upper one of a three-class Otsu split (background,
    red cells, white-cell nuclei): a two-class split separates the dark nuclei from
    everything else on pale smears and loses the red cells.
    """
    return flat_cell_mask(flatten_background(rgb[..., 1]))


def flat_cell_mask(green: np.ndarray) -> np.ndarray:
    """:func:`cell_mask` of a green channel already flattened by :func:`flatten_background`."""
    _, upper = otsu_thresholds_3(green)
    return fill_holes(green < upper)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole filled: background not 4-connected to the image border (as
    ``scipy.ndimage.binary_fill_holes`` with its default structure)."""
    height, width = mask.shape
    # A one-pixel background frame joins all border background into one region for a single fill.
    framed = np.zeros((height + 2, width + 2), np.uint8)
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return framed[1:-1, 1:-1] != 2


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
    small_size = (max(1, round(width / step)), max(1, round(height / step)))
    # PIL's box filter, not cv2.INTER_AREA: at fractional steps they weigh edge pixels differently,
    # which moved the flattened values and the estimates; on so small a copy it costs little.
    small = np.asarray(Image.fromarray(values).resize(small_size, Image.BOX))
    sigma = ILLUMINATION_SIGMA * max(small_size)
    kernel = 2 * int(4 * sigma + 0.5) + 1  # the Gaussian cut at four sigma
    blurred = cv2.GaussianBlur(small, (kernel, kernel), sigma, borderType=cv2.BORDER_REFLECT)
    level = cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR)
    flat = values / np.maximum(level, 1.0) * float(level.mean())
    return np.clip(flat, 0, 255).astype(np.uint8)


def otsu_thresholds_3(values: np.ndarray) -> tuple[int, int]:
    """The two thresholds of a three-class Otsu (1979) split of 8-bit values (classes ``< t1``,
    ``t1..t2-1``, ``>= t2``), by exhaustive search over the histogram."""
    hist = np.bincount(values.reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    count = np.concatenate([[0.0], np.cumsum(hist)])
    mass = np.concatenate([[0.0], np.cumsum(hist * levels)])
    t1, t2 = np.arange(1, 255), np.arange(2, 256)

    def spread(lo, hi):
        n = count[hi] - count[lo]
        return np.where(n > 0, (mass[hi] - mass[lo]) ** 2 / np.maximum(n, 1), 0.0)

    # Only the middle class depends on both thresholds: the outer two are computed once per
    # threshold and broadcast, which is what makes the exhaustive search cheap.
    between = spread(0, t1)[:, None] + spread(t1[:, None], t2[None, :]) + spread(t2, 256)[None, :]
    between[t2[None, :] <= t1[:, None]] = -1
    i, j = np.unravel_index(int(np.argmax(between)), between.shape)
    return int(t1[i]), int(t2[j])


DILATE_MAX_RADIUS = 14
"""Openings by discs up to this radius dilate the centres with the disc; for larger discs a
distance transform from the centres is cheaper, as its cost does not grow with the radius (14: the
least time on one core over the Aria test fields)."""


def pattern_spectrum(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Area of the mask's opening by a disc of each radius (non-increasing in radius, but for a
    few pixels: digital discs of successive radii do not nest exactly as openings).

    The opening by the disc ``{|d| < r}`` is every pixel closer than ``r`` to a centre, a pixel at
    least ``r`` inside the mask.
    """
    inside = exact_distance(mask.astype(np.uint8))
    areas = []
    for radius in radii:
        centres = (inside >= radius).astype(np.uint8)
        if not cv2.countNonZero(centres):
            areas += [0] * (len(radii) - len(areas))  # larger discs fit nowhere either
            break
        areas.append(_reached_area(centres, radius))
    return np.asarray(areas, dtype=np.float64)


def exact_distance(mask: np.ndarray) -> np.ndarray:
    """Each nonzero pixel's Euclidean distance to the nearest zero pixel (float32), the same to the bit
    whatever OpenCV's thread count.

    OpenCV's precise transform is exact but for rounding, and rounds differently in each thread's stripe
    (by one unit in the last place), which moved a white cell's pixels with the number of cores. Distances
    between pixels are square roots of integers: the squares are rounded back to them, and their square
    roots taken once more (IEEE square roots are correctly rounded).
    """
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    np.multiply(distance, distance, out=distance)  # in place: temporaries cost ten times more
    np.rint(distance, out=distance)
    return np.sqrt(distance, out=distance)


def _reached_area(centres: np.ndarray, radius: float) -> int:
    """How many pixels lie closer than ``radius`` to a centre (a nonzero pixel of ``centres``).

    Only the centres' bounding box widened by the disc is searched, as no pixel beyond it is that
    close: the centres of the larger discs lie in a few large cells.
    """
    x, y, width, height = cv2.boundingRect(centres)
    half = int(np.ceil(radius)) - 1  # the disc's half-width
    near = centres[max(0, y - half):y + height + half, max(0, x - half):x + width + half]
    if radius <= DILATE_MAX_RADIUS:
        return cv2.countNonZero(cv2.dilate(near, disc(radius)))
    reach = exact_distance(1 - near)
    return int(np.count_nonzero(reach < radius))


def disc(radius: float) -> np.ndarray:
    """The structuring element ``{|d| < radius}`` (open, like the opening's ``reach < radius``) as
    an 8-bit kernel."""
    half = int(np.ceil(radius)) - 1
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    return (x * x + y * y < radius * radius).astype(np.uint8)


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
    estimate = _estimate_at(rgb, ANALYSIS_SIDE, reduced)
    factor = estimate.factor
    if estimate.diameter is not None and factor > 1 and estimate.diameter / factor < FINE_DIAMETER:
        side = int(min(MAX_ANALYSIS_SIDE, ANALYSIS_SIDE * FINE_TARGET * factor / estimate.diameter))
        finer = _estimate_at(rgb, side)
        if finer.diameter is not None:
            return replace(finer, mask=estimate.mask, green=estimate.green)
    return estimate


def _estimate_at(rgb: np.ndarray, side: int, reduced: tuple[np.ndarray, float] | None = None) -> ScaleEstimate:
    small, factor = analysis_copy(rgb, side) if reduced is None else reduced
    green = flatten_background(small[..., 1])
    mask = flat_cell_mask(green)
    foreground = float(mask.mean())
    if not MIN_FOREGROUND <= foreground <= MAX_FOREGROUND:
        return ScaleEstimate(None, f"cells cover {foreground:.0%} of the image: too little contrast to measure",
                             foreground, mask, green, factor=factor)
    areas = pattern_spectrum(mask, RADII)
    lost = areas[:-1] - areas[1:]
    found = partial(ScaleEstimate, foreground=foreground, mask=mask, green=green, lost=lost, factor=factor)
    peak = int(np.argmax(_smoothed(lost)))
    if peak == len(lost) - 1 or lost[peak] <= 0:
        return found(None, "no typical cell size in range")
    radius, cells = _measure_peak(lost, peak)
    if cells < MIN_CELLS:
        return found(None, f"too few cells to measure ({cells:.0f})")
    return found(2 * radius * factor)


def _smoothed(lost: np.ndarray) -> np.ndarray:
    return np.convolve(lost, [0.25, 0.5, 0.25], mode="same")


def _measure_peak(lost: np.ndarray, peak: int) -> tuple[float, float]:
    """The radius of the spectrum's peak at index ``peak`` (the lost area's mean radius over it and its
    neighbours, in analysis pixels) and how many cells of that radius the area lost near it makes."""
    radii = RADII[:-1]
    window = slice(max(0, peak - 1), peak + 2)
    radius = float(np.sum(radii[window] * lost[window]) / np.sum(lost[window])) + 0.5
    near = np.abs(radii - radius) <= 0.3 * radius
    return radius, lost[near].sum() / (np.pi * radius ** 2)


def diameter_between(estimate: ScaleEstimate, low: float, high: float) -> tuple[float, float] | None:
    """The diameter of the strongest local peak of ``estimate``'s pattern spectrum whose cells are ``low`` to
    ``high`` pixels across (the image's pixels), and how many cells of that size it counts; None when no
    peak lies there.

    The spectrum's highest peak is the estimate; this finds a lesser one, e.g. the red cells of a crowded
    field whose merged cells make the highest (see :func:`allscan.domain.fields.crowded_field_diameter`).
    """
    if estimate.lost is None:
        return None
    lost, smoothed = estimate.lost, _smoothed(estimate.lost)
    diameters = 2 * (RADII[:-1] + 0.5) * estimate.factor
    peaks = [i for i in range(1, len(lost) - 1)
             if smoothed[i] > smoothed[i - 1] and smoothed[i] >= smoothed[i + 1] and lost[i] > 0
             and low <= diameters[i] <= high]
    if not peaks:
        return None
    radius, cells = _measure_peak(lost, max(peaks, key=lambda i: smoothed[i]))
    return 2 * radius * estimate.factor, cells
