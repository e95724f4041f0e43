"""One image to model fields: estimate its scale, bring it to the training scale and colour, cut it
into fields and drop the background ones. Runs on the decode threads, before the models.
"""

import math
import numbers
from dataclasses import dataclass, field, replace

import numpy as np

from allscan.domain.cells import CellCrops, cell_crops
from allscan.domain.reference import SCALE_TOLERANCE, SINGLE_FIELD_SIDE, DomainChecks, DomainReference
from allscan.domain.scale import (MIN_FOREGROUND, ScaleEstimate, analysis_copy, cell_mask, diameter_between,
                                  estimate_diameter)
from allscan.domain.stain import colour_stats, reinhard
from allscan.domain.tiles import FIELD_SIZE, MIN_CELL_FRACTION, Box, cell_fractions, field_boxes, pad_to_field, rescale
from allscan.images import MAX_PIXELS, ImageError, resize

STAIN_NORM_FACTOR = 3.0
"""Colour is normalised only when an image's colour distance exceeds this many times the guard's
limit. Measured on the Aria test split with a HED stain shift: normalising every image beyond the
limit lowered ROC AUC (mild shift 0.996 → 0.971, strong 0.969 → 0.897), because whole-image
statistics also carry class information; beyond three times the limit it helped (strong 0.969 →
0.975) and left mild shifts alone. Any image beyond the limit is out of domain anyway."""


@dataclass(frozen=True)
class DomainOptions:
    """Per-run choices.

    Attributes:
        stain_norm: Normalise images whose colour lies far outside the training range.
        rbc_diameter: The lab's known red-cell diameter in pixels, overriding the estimate.
        cells: Find and judge the white cells too (when the models come with a cell classifier).
    """

    stain_norm: bool = True
    rbc_diameter: float | None = None
    cells: bool = True

    def __post_init__(self):
        size = self.rbc_diameter
        if size is None:
            return
        if isinstance(size, bool) or not isinstance(size, numbers.Real) or not (math.isfinite(size) and size > 0):
            raise ValueError(f"rbc_diameter must be a red cell's diameter in pixels, above 0, not {size!r}")
        # a numpy number would not key the results store (JSON); a Python one keys it as before
        object.__setattr__(self, "rbc_diameter", int(size) if isinstance(size, numbers.Integral) else float(size))

    def key(self) -> dict:
        """What changes results, for the results-store key."""
        return {"stain_norm": self.stain_norm, "rbc_diameter": self.rbc_diameter}


@dataclass(frozen=True)
class FieldSet:
    """An image's fields at every model input size, and how they were made.

    Attributes:
        inputs: ``{input_size: (n_fields, s, s, 3) uint8}``.
        boxes: Each field's corner in the rescaled image.
        shape: ``(height, width)`` of the rescaled (and padded) image the boxes refer to.
        content: Where the image's own pixels lie in it: ``(y0, x0, y1, x1)``.
        scale: Factor applied to reach the training scale; None when there was no estimate and
            the whole image was used as one field.
        diameter: Red-cell diameter in the image's own pixels (estimated or given), if known.
        colour: The image's raw colour statistics.
        stain_normalised: Whether its colour was normalised.
        background_only: Whether no field held enough cells (then the fullest one is scored).
        notes: Plain-language remarks for the results row.
        long_side: The decoded image's longest side, which sets its scale tolerance (see
            :meth:`~allscan.domain.reference.DomainChecks.tolerance`).
        cells: Its white cells and their crops, in the decoded image's pixels; None when cells were not
            looked for.
    """

    inputs: dict[int, np.ndarray]
    boxes: tuple[Box, ...]
    shape: tuple[int, int]
    content: tuple[int, int, int, int]
    scale: float | None
    diameter: float | None
    colour: np.ndarray
    stain_normalised: bool = False
    background_only: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    long_side: int = 0
    cells: CellCrops | None = None

    @property
    def tiles(self) -> int:
        return len(self.boxes)


METHOD_REVISION = 4
"""The per-image method's revision (scale, fields, cells), part of the results digest: raised when a change
moves some image's results with the same models, so that a results store's rows from an earlier revision are
scored again rather than mixed with new ones. 2: crowded single fields measured at their red cells
(:func:`crowded_field_diameter`), distances exact whatever the thread count. 3: an image scored whole for want
of a red-cell estimate is mostly background when its cells cover too little of it, and out of domain when it
is larger than one field (see :mod:`allscan.domain.guard`). 4: a single field whose red cells read smaller than
the reference's gets the ×1.3 band (:meth:`~allscan.domain.reference.DomainChecks.tolerance`), and the guard
judges the features of the fields that made an image's verdict too."""

NO_REFERENCE_NOTE = "these models came without a domain reference: no rescale, no out-of-domain check"


@dataclass(frozen=True)
class FieldMaker:
    """Cuts decoded images into fields: what the CPU step needs and no models (picklable, so that
    an engine can ship it to worker processes).

    Attributes:
        reference: The training domain, or None for models shipped without one (whole images).
        sizes: The models' input sizes.
        options: The run's domain options.
        cells: Also find the white cells and cut their crops.
    """

    reference: DomainReference | None
    sizes: tuple[int, ...]
    options: DomainOptions = DomainOptions()
    cells: bool = False

    def __call__(self, rgb: np.ndarray) -> "FieldSet":
        if self.reference is not None:
            return prepare_fields(rgb, self.reference, self.sizes, self.options, self.cells)
        fields = whole_image(rgb, self.sizes, notes=(NO_REFERENCE_NOTE,))
        return with_cells(fields, rgb) if self.cells else fields


NO_CELLS_NOTE = "no red-cell size estimate: white cells not looked for"
TRAINING_SCALE_NOTE = "white cells looked for at the training scale (no red-cell size estimate)"


def with_cells(fields: FieldSet, rgb: np.ndarray, fallback: float | None = None,
               cells_mask: np.ndarray | None = None, green: np.ndarray | None = None) -> FieldSet:
    """``fields`` with the image's white cells, found at its red-cell size (``cells_mask`` and ``green``:
    the cell mask the scale estimate made and its flattened green channel, reused where they fit).

    Without an estimate from the fields, an image whose fields were cut with a domain reference is taken
    to be at the training scale (``fallback``, the reference's red-cell size), as its fields were when it
    was scored whole; one without a reference is measured here. Without any size there is no scale to
    find cells at, and a note says so.
    """
    notes = fields.notes
    diameter = fields.diameter
    if diameter is None and fallback is not None:
        diameter, notes = fallback, (*notes, TRAINING_SCALE_NOTE)
    elif diameter is None:
        diameter = estimate_diameter(rgb).diameter
    if diameter is None:
        return replace(fields, cells=CellCrops((), np.zeros((0, 0, 0, 3), np.uint8), 0.0),
                       notes=(*notes, NO_CELLS_NOTE))
    return replace(fields, cells=cell_crops(rgb, diameter, cells_mask, green), notes=notes)


def whole_image(rgb: np.ndarray, sizes, colour: np.ndarray | None = None, notes: tuple[str, ...] = ()) -> FieldSet:
    """The image as one field, resized to each input size (no rescale, no tiling)."""
    colour = colour_stats(analysis_copy(rgb)[0]) if colour is None else colour
    inputs = {size: resize(rgb, size)[None] for size in sizes}
    square = (FIELD_SIZE, FIELD_SIZE)
    return FieldSet(inputs, (Box(0, 0),), square, (0, 0, *square), None, None, colour, notes=notes,
                    long_side=max(rgb.shape[:2]))


def prepare_fields(rgb: np.ndarray, reference: DomainReference, sizes, options: DomainOptions,
                   cells: bool = False) -> FieldSet:
    """Cut ``rgb`` into fields at the training scale and colour (see the module docstring), and with
    ``cells`` find its white cells (:func:`with_cells`)."""
    reduced = analysis_copy(rgb)
    small = reduced[0]
    colour = colour_stats(small)
    notes: list[str] = []
    mask = green = None
    if options.rbc_diameter is not None:
        diameter: float | None = options.rbc_diameter
    else:
        estimate = estimate_diameter(rgb, reduced)
        diameter, mask, green = estimate.diameter, estimate.mask, estimate.green
        if diameter is None:
            whole = whole_image(rgb, sizes, colour,
                                (f"no red-cell size estimate ({estimate.reason}): whole image scored as one field",))
            whole = replace(whole, background_only=estimate.foreground < MIN_FOREGROUND)
            return with_cells(whole, rgb, reference.checks.rbc_diameter) if cells else whole
        crowded = crowded_field_diameter(estimate, reference.checks, rgb.shape[:2])
        if crowded is not None:
            notes.append(f"crowded field: red cells {crowded:.0f} px across, measured apart from the merged ones"
                         f" that read {diameter:.0f} px")
            diameter = crowded
    factor = reference.checks.rbc_diameter / diameter if reference.checks.rbc_diameter > 0 else 1.0
    tolerance = reference.checks.tolerance(max(rgb.shape[:2]), smaller=factor > 1)
    scale = 1.0 if 1 / tolerance <= factor <= tolerance else factor
    smallest = FIELD_SIZE / min(rgb.shape[:2])
    if scale < smallest:
        scale = min(1.0, smallest)
        notes.append("not shrunk below one field (its red cells stay larger than the training's)")
    check_rescaled_size(rgb.shape[:2], scale, diameter, reference.checks.rbc_diameter)
    image = rescale(rgb, scale)
    colour_limit = STAIN_NORM_FACTOR * reference.checks.colour.threshold
    normalise = options.stain_norm and reference.checks.colour.distance(colour)[0] > colour_limit
    if normalise:
        image = reinhard(image, colour, reference.stain_reference)
        notes.append("stain colour normalised to the training reference")
    own_height, own_width = image.shape[:2]
    image, origin = pad_to_field(image)
    content = (origin.y, origin.x, origin.y + own_height, origin.x + own_width)
    boxes = field_boxes(*image.shape[:2])
    fractions = cell_fractions(cell_mask(small) if mask is None else mask, boxes, image.shape[:2])
    keep = [i for i, f in enumerate(fractions) if f >= MIN_CELL_FRACTION]
    background_only = not keep
    if background_only:
        keep = [int(np.argmax(fractions))]
    kept = [boxes[i] for i in keep]
    crops = [image[b.y:b.y + FIELD_SIZE, b.x:b.x + FIELD_SIZE] for b in kept]
    inputs = {size: np.stack([resize(c, size) for c in crops]) for size in sizes}
    fields = FieldSet(inputs, tuple(kept), image.shape[:2], content, scale, diameter, colour, normalise,
                      background_only, tuple(notes), max(rgb.shape[:2]))
    return with_cells(fields, rgb, cells_mask=mask, green=green) if cells else fields


def check_rescaled_size(shape: tuple[int, int], scale: float, diameter: float, reference_diameter: float) -> None:
    """An image enlarged to the training scale stays within :data:`~allscan.images.MAX_PIXELS`: tiny red cells
    (or a small ``--rbc-diameter``) would otherwise enlarge it without bound, and its fields with it.

    Raises:
        ImageError: It would not.
    """
    height, width = (round(side * scale) for side in shape)
    if height * width > MAX_PIXELS:
        raise ImageError(f"at the training scale this image would be {width}x{height} pixels (red cells"
                         f" {diameter:.1f} px across where the training's are {reference_diameter:.1f}): over"
                         f" the {MAX_PIXELS / 1e6:.0f} MP limit; check --rbc-diameter, or give a larger image")


CROWDED_MIN_CELLS = 25
"""A single field whose red-cell estimate is beyond the training scale's tolerance but whose pattern spectrum
still counts at least this many red cells of the training size (per 224-px field's area) is a crowded field
at the training scale. Where red cells pack, the gaps between them close and the mask merges them into
large blobs, whose size the spectrum's highest peak then reads (45-75 px where the training's are 15.5; 14
of the 2,740 training and validation fields). Among 150 training fields enlarged 2, 2.5 and 3 times and cut
to 224 px, those the estimate put beyond the tolerance (150 of 450) counted at most 20 such cells; 9 of the 14
crowded fields counted 26-69 (the other 5: 10, or no peak within the tolerance)."""


def crowded_field_diameter(estimate: ScaleEstimate, checks: DomainChecks, shape: tuple[int, int]) -> float | None:
    """The red-cell diameter of a crowded single field (see :data:`CROWDED_MIN_CELLS`) whose estimate,
    ``estimate``, reads its merged cells; None for any other image.

    Only single fields qualify (images no longer than
    :data:`~allscan.domain.reference.SINGLE_FIELD_SIDE`, whose estimates vary as much as the training
    fields' do) whose estimate is larger than the reference's tolerance allows (merged cells read larger,
    never smaller); the lesser peak must lie within :data:`~allscan.domain.reference.SCALE_TOLERANCE` of the
    reference's red-cell size.
    """
    reference_diameter = checks.rbc_diameter
    if estimate.diameter is None or reference_diameter <= 0 or max(shape) > SINGLE_FIELD_SIDE:
        return None
    if estimate.diameter <= reference_diameter * checks.tolerance(max(shape)):
        return None
    found = diameter_between(estimate, reference_diameter / SCALE_TOLERANCE, reference_diameter * SCALE_TOLERANCE)
    if found is None:
        return None
    diameter, cells = found
    per_field = cells * FIELD_SIZE * FIELD_SIZE / (shape[0] * shape[1])
    return diameter if per_field >= CROWDED_MIN_CELLS else None


def in_original_pixels(fields: FieldSet, reduction: float, size: tuple[int, int]) -> FieldSet:
    """Express scale, red-cell size and cells in the file's own pixels (its ``size``, width and height) when it
    was decoded reduced by ``reduction`` (a large JPEG decoded at 1/2, 1/4 or 1/8 of its size)."""
    if reduction == 1.0:
        return fields
    return replace(fields, scale=None if fields.scale is None else fields.scale * reduction,
                   diameter=None if fields.diameter is None else fields.diameter / reduction,
                   cells=None if fields.cells is None else fields.cells.scaled(1 / reduction, size))
