"""Cell finder: the nucleated (white) cells of a smear image, by the colour of their nuclei.

Romanowsky stains colour nuclei purple to blue: they absorb green light strongly and blue light
little. Red cells (pink, or grey-blue on some smears) absorb blue about as much as green, and so
do black dirt and printed scale bars. The nucleus signal is therefore the optical density in green
less that in blue, relative to the bright background; nuclei are thresholded per image on it. The
mask is cut into cells at the scale of the red cells, whose diameter is the image's ruler: gaps
narrower than a fraction of it are bridged (the lobes of a neutrophil's nucleus are one cell), touching
round nuclei are split at the necks of their distance transform, and objects too small (platelets) or
too large for a white-cell nucleus are dropped.
"""

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage

from allscan.domain.scale import disc, exact_distance, fill_holes, flat_cell_mask, flatten_background

RBC_UM = 7.5
"""A red cell's diameter in micrometres: the ruler for areas in µm²."""

WORK_DIAMETER = 24.0
"""Images are analysed reduced so that a red cell is about this many pixels across (never enlarged):
ample for nuclei at least half a red cell across, and it makes the cost independent of the camera."""

THIN_RADIUS = 0.1
"""Stained structures narrower than twice this (in red-cell diameters) are opened away before
thresholding: the coloured fringes that lenses draw around red cells, and specks; a neutrophil's
lobes are wider."""
LOBE_GAP = 0.3
"""Nucleus fragments closer than this (in red-cell diameters) belong to one cell: a neutrophil's lobes
are joined by strands too thin to see, a few tenths of a red cell long at most."""
SPLIT_RADIUS = 0.45
"""A part of a nucleus blob whose inscribed disc is at least this radius (in red-cell diameters) can
be a nucleus of its own: round nuclei (lymphocytes, blasts) are 0.9-2 red cells across, while the
lobes of neutrophils and eosinophils are narrower (at 0.3, BCCD's lobed nuclei were split: precision
0.75 there)."""
SPLIT_DEPTH = 0.2
"""…and only when the blob narrows between it and its neighbour by this much (in red-cell diameters)
of inscribed radius: two round nuclei that touch meet at a narrow neck, while the lobes of one
nucleus form a blob with shallow dents."""
MIN_NUCLEUS, MAX_NUCLEUS = 0.5, 2.6
"""Equivalent diameter of a white cell's nucleus, in red-cell diameters. Measured on the boxed cells
found in BCCD and the WBC set: 1st percentile 0.5, median 1.3, largest 2.1 (blasts run larger);
platelets and stain specks lie below 0.5."""
MAX_EXTENT = 3.0
"""Longest side of a nucleus's box, in red-cell diameters: a large blast is under 20 µm across."""


@dataclass(frozen=True)
class Cell:
    """A white cell found in an image, in the image's own pixels.

    Attributes:
        x, y: Centroid of its nucleus.
        x0, y0, x1, y1: Box around its nucleus (``x1``, ``y1`` exclusive).
        nucleus_px: Nucleus area in pixels.
    """

    x: float
    y: float
    x0: int
    y0: int
    x1: int
    y1: int
    nucleus_px: float

    def area_um2(self, rbc_diameter: float) -> float:
        """Nucleus area in µm², taking a red cell ``rbc_diameter`` pixels across as :data:`RBC_UM`."""
        return self.nucleus_px * (RBC_UM / rbc_diameter) ** 2


def find_cells(rgb: np.ndarray, rbc_diameter: float, cells_mask: np.ndarray | None = None,
               green: np.ndarray | None = None) -> list[Cell]:
    """The white cells of a smear image.

    Args:
        rgb: The image, ``(height, width, 3)`` uint8.
        rbc_diameter: Its red-cell diameter in its own pixels (see
            :func:`allscan.domain.scale.estimate_diameter`).
        cells_mask: The image's :func:`~allscan.domain.scale.cell_mask`, if the scale estimate already
            made it; used when it has the size the cells are looked for at (else made again).
        green: The green channel that mask was made from (:attr:`~allscan.domain.scale.ScaleEstimate.green`);
            used when the cells are looked for in ``rgb`` itself and it has ``rgb``'s size (then it was
            made from the same pixels).

    Returns:
        One :class:`Cell` per nucleus, in the image's pixels, in no particular order.
    """
    factor = min(1.0, WORK_DIAMETER / rbc_diameter)
    small = _reduce(rgb, factor)
    diameter = rbc_diameter * factor
    if cells_mask is not None and cells_mask.shape != small.shape[:2]:
        cells_mask = None
    if green is not None and not (small is rgb and green.shape == rgb.shape[:2]):
        green = None
    signal = cv2.morphologyEx(nucleus_signal(small, cells_mask, green), cv2.MORPH_OPEN,
                              disc(max(1.0, THIN_RADIUS * diameter)))
    mask = fill_holes(nucleus_mask(signal))
    labels = _cells(mask, diameter)
    return _describe(labels, mask, diameter, (rgb.shape[1] / small.shape[1], rgb.shape[0] / small.shape[0]))


def _reduce(rgb: np.ndarray, factor: float) -> np.ndarray:
    if factor >= 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def nucleus_signal(rgb: np.ndarray, cells_mask: np.ndarray | None = None,
                   green: np.ndarray | None = None) -> np.ndarray:
    """Optical density in green less that in blue, each relative to the image's background (outside
    ``cells_mask``, the image's cell mask); each is made here when not given (``green``: the green
    channel flattened by :func:`~allscan.domain.scale.flatten_background`)."""
    green = flatten_background(rgb[..., 1]) if green is None else green
    blue = flatten_background(rgb[..., 2])
    background = ~(flat_cell_mask(green) if cells_mask is None else cells_mask)
    if not background.any():
        background[:] = True
    # The flattened channels are 8-bit: a table of each level's density replaces a logarithm per pixel.
    green_density, blue_density = (cv2.LUT(c, _density_table(_median_u8(c[background]))) for c in (green, blue))
    return green_density - blue_density


def _density_table(level: float) -> np.ndarray:
    """The optical density ``-log10(v / level)`` of each 8-bit value ``v`` (both taken as at least 1), float32."""
    values = np.arange(256, dtype=np.float32)
    return -np.log10(np.maximum(values, 1.0) / np.maximum(np.float32(level), 1.0))


def _median_u8(values: np.ndarray) -> float:
    """``np.median`` of uint8 values, from their histogram (a partition of every value costs more)."""
    cumulative = np.cumsum(np.bincount(values, minlength=256))
    n = int(cumulative[-1])
    lower = int(np.searchsorted(cumulative, (n + 1) // 2))
    upper = int(np.searchsorted(cumulative, n // 2 + 1))
    return (lower + upper) / 2


SEED_FLOOR = 0.08
"""Nuclei stand at least this much (optical density in green less that in blue) above the image's
median: red cells and background, most of any field, stay within a few hundredths of it on every set
measured (BCCD, the WBC set, the training fields), nuclei lie 0.15-0.4 above it."""


def nucleus_mask(signal: np.ndarray) -> np.ndarray:
    """Pixels of nuclei, by hysteresis: seeds that stand far above the bulk (background and red
    cells), grown through the pixels above the midpoint between the bulk and the seeds' level.

    The seed level is an Otsu split of the pixels well above the bulk, as nuclei are too few for a
    split of all pixels; the grown mask then takes in the nuclei's paler rims and lobes.
    """
    bulk = float(np.median(signal))
    floor = bulk + SEED_FLOOR
    upper = signal[signal > floor]
    seeds = signal > (max(floor, _otsu(upper)) if upper.size >= 16 else floor)
    if not seeds.any():
        return seeds
    low = (bulk + float(np.median(signal[seeds]))) / 2
    count, grown = cv2.connectedComponents((signal > low).astype(np.uint8))
    seeded = np.zeros(count, bool)
    seeded[grown[seeds]] = True
    return seeded[grown]


def _otsu(values: np.ndarray) -> float:
    """Otsu's (1979) threshold of float values, over a 128-bin histogram."""
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)[:-1]
    above = hist.sum() - below
    mass_below = np.cumsum(hist * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = mass_below / below - (np.sum(hist * centres) - mass_below) / above
    between = np.nan_to_num(below * above * gap ** 2)
    return float(edges[1:-1][int(np.argmax(between))])


def _cells(mask: np.ndarray, diameter: float) -> np.ndarray:
    """Label image of cells: lobes joined across narrow gaps, touching round nuclei split.

    Splits are judged on the nuclei's own shape (the closing that joins lobes also fills the necks
    between touching nuclei). A blob with several nucleus centres is cut by their power diagram:
    each pixel goes to the centre ``c`` with the least ``|p - c|² - r²``, ``r`` the centre's
    inscribed radius, which cuts two overlapping discs along their common chord. Centres are looked
    for blob by blob, inside each blob's box, and only in blobs wide enough to hold one.
    """
    mask = mask.astype(np.uint8)
    joined = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disc(max(1.0, LOBE_GAP * diameter / 2 + 0.5)))
    joined = fill_holes(joined.astype(bool)).astype(np.uint8)
    count, blobs, stats, _ = cv2.connectedComponentsWithStats(joined)
    inside = exact_distance(mask)
    radius = SPLIT_RADIUS * diameter
    labels = blobs.copy()
    next_label = count
    for blob in range(1, count):
        x, y, w, h, area = stats[blob]
        if area < np.pi * radius * radius:
            continue
        own = blobs[y:y + h, x:x + w] == blob
        depth = np.where(own, inside[y:y + h, x:x + w], 0.0).astype(np.float32)
        if depth.max() < radius:
            continue
        centres, markers = cv2.connectedComponents(((depth >= radius) & _domes(depth, SPLIT_DEPTH * diameter))
                                                   .astype(np.uint8))
        if centres < 3:
            continue
        found = []
        for marker in range(1, centres):
            ys, xs = np.nonzero(markers == marker)
            found.append((xs.mean(), ys.mean(), depth[ys[0], xs[0]]))
        ys, xs = np.nonzero(own)
        power = [(xs - cx) ** 2 + (ys - cy) ** 2 - r * r for cx, cy, r in found]
        labels[ys + y, xs + x] = next_label + np.argmin(power, axis=0)
        next_label += len(found)
    return labels


def _domes(values: np.ndarray, depth: float) -> np.ndarray:
    """The tops of the maxima that stand at least ``depth`` above the saddle to any higher one (the
    regional maxima of the h-maxima transform, by reconstruction by dilation of ``values - depth``)."""
    kernel = np.ones((3, 3), np.uint8)
    floor = values - depth
    while True:
        grown = np.minimum(cv2.dilate(floor, kernel), values)
        if np.array_equal(grown, floor):
            break
        floor = grown
    return values - floor >= depth - 1e-3


def _describe(labels: np.ndarray, mask: np.ndarray, diameter: float, scale: tuple[float, float]) -> list[Cell]:
    """The cells of a label image whose nuclei fit a white cell, in the original image's pixels (``scale``:
    how many of them across and down to one of the label image's; the reduction rounds each side apart)."""
    sx, sy = scale
    min_area = np.pi / 4 * (MIN_NUCLEUS * diameter) ** 2
    max_area = np.pi / 4 * (MAX_NUCLEUS * diameter) ** 2
    nuclei = np.where(mask, labels, 0).astype(np.int32)
    # Every nucleus's pixel count and coordinate sums in one pass over its pixels (integer sums, so the
    # centroids are those of each nucleus's own pixels to the last bit).
    pixels = np.flatnonzero(nuclei)
    owner = nuclei.reshape(-1)[pixels]
    ys, xs = np.divmod(pixels, nuclei.shape[1])
    count, sum_x, sum_y = (np.bincount(owner, weights=w) for w in (None, xs, ys))
    cells = []
    for label, box in enumerate(ndimage.find_objects(nuclei), start=1):
        if box is None or not min_area <= count[label] <= max_area:
            continue
        (y0, y1), (x0, x1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        if max(x1 - x0, y1 - y0) > MAX_EXTENT * diameter:
            continue
        x, y = sum_x[label] / count[label], sum_y[label] / count[label]
        # Pixel centres: pixel i of the reduced image covers original pixels i*scale to (i+1)*scale.
        cells.append(Cell(float((x + 0.5) * sx - 0.5), float((y + 0.5) * sy - 0.5),
                          int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)),
                          int(count[label]) * sx * sy))
    return cells


CROP_SIZE = 64
"""Side of a cell crop as the cell classifier sees it, in pixels."""
CROP_DIAMETERS = 4.0
"""Side of a cell crop in red-cell diameters (30 µm): room for a large blast and a margin of its
surroundings. At the training scale (red cells about 15.5 px across) that is 62 px, close to
:data:`CROP_SIZE`, so training crops are barely resampled."""


def crop_cells(rgb: np.ndarray, cells: list[Cell], rbc_diameter: float, size: int = CROP_SIZE) -> np.ndarray:
    """Crops of :data:`CROP_DIAMETERS` red cells a side centred on each cell's nucleus, resized to
    ``size`` pixels: ``(n, size, size, 3)`` uint8, at the same physical size whatever the camera.

    Crops that reach past the image's edge are filled there with the image's median colour (its
    background, in a smear field) rather than mirrored, which would invent nuclei.
    """
    if not cells:
        return np.zeros((0, size, size, 3), np.uint8)
    side = max(8, int(round(CROP_DIAMETERS * rbc_diameter)))
    fill = [_median_u8(rgb[::4, ::4, c].reshape(-1)) for c in range(3)]
    padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_CONSTANT, value=fill)
    crops = []
    for cell in cells:
        x0 = int(round(cell.x - side / 2)) + side
        y0 = int(round(cell.y - side / 2)) + side
        crop = padded[y0:y0 + side, x0:x0 + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops.append(crop if side == size else cv2.resize(crop, (size, size), interpolation=interpolation))
    return np.stack(crops)


@dataclass(frozen=True)
class CellCrops:
    """An image's white cells and their crops, ready for the cell classifier.

    Attributes:
        cells: Each cell, in the image's own pixels.
        crops: Their crops, colour normalised, ``(n, CROP_SIZE, CROP_SIZE, 3)`` uint8.
        rbc_diameter: The red-cell diameter the crops were cut at, in the image's pixels.
    """

    cells: tuple[Cell, ...]
    crops: np.ndarray
    rbc_diameter: float

    def __len__(self) -> int:
        return len(self.cells)

    def scaled(self, factor: float, size: tuple[int, int]) -> "CellCrops":
        """The same cells in pixels ``factor`` times larger (an image decoded reduced, in its file's pixels), their
        boxes within the file's ``size`` (width, height)."""
        if factor == 1.0:
            return self
        width, height = size
        cells = tuple(Cell(c.x * factor, c.y * factor, int(c.x0 * factor), int(c.y0 * factor),
                           min(width, int(np.ceil(c.x1 * factor))), min(height, int(np.ceil(c.y1 * factor))),
                           c.nucleus_px * factor * factor)
                      for c in self.cells)
        return replace(self, cells=cells, rbc_diameter=self.rbc_diameter * factor)


REFERENCE_LAB_MEAN = np.array([215.0, 133.0, 110.0], np.float32)
REFERENCE_LAB_STD = np.array([31.0, 13.0, 18.0], np.float32)
"""Colour statistics every crop is brought to, in OpenCV's 8-bit L*a*b*: the average of the Aria training
crops' own (so normalised crops still look like smears)."""


def normalise_colour(crops: np.ndarray) -> np.ndarray:
    """Each crop's colour brought to one reference (Reinhard et al. 2001, per crop): every L*a*b*
    channel shifted and scaled to :data:`REFERENCE_LAB_MEAN` and :data:`REFERENCE_LAB_STD`.

    Why: on the training data a crop's colour alone tells its field's class (gradient boosting on nine
    colour statistics per crop: cell ROC AUC 0.989 on test; the background's colour alone 0.913), and a
    classifier trained on raw crops used it: imposing the colour statistics of crops of the other class
    dropped its cell AUC from 0.998 to 0.60. Crops of one colour leave the classifier the cell's shape,
    texture and the contrast within the crop, which is what carries to another lab's stain.
    """
    out = np.empty_like(crops)
    levels = np.arange(256, dtype=np.float64)[:, None]
    for i, crop in enumerate(crops):
        lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
        mean, std = (v.reshape(3) for v in cv2.meanStdDev(lab))
        # A lookup table per channel: every 8-bit level shifted and scaled, as (lab - mean) * k + reference.
        table = (levels - mean) * (REFERENCE_LAB_STD / np.maximum(std, 1.0)) + REFERENCE_LAB_MEAN
        table = np.clip(table + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)
        out[i] = cv2.cvtColor(cv2.LUT(lab, table), cv2.COLOR_LAB2RGB)
    return out


def cell_crops(rgb: np.ndarray, rbc_diameter: float, cells_mask: np.ndarray | None = None,
               green: np.ndarray | None = None) -> CellCrops:
    """Find an image's white cells (:func:`find_cells`) and cut their crops (:func:`crop_cells`), colour
    normalised (:func:`normalise_colour`): what the cell classifier is trained on and judges."""
    cells = find_cells(rgb, rbc_diameter, cells_mask, green)
    return CellCrops(tuple(cells), normalise_colour(crop_cells(rgb, cells, rbc_diameter)), rbc_diameter)
