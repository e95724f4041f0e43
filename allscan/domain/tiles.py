"""Cutting a rescaled image into model fields and skipping background ones.

A field is :data:`FIELD_SIZE` pixels square, the training images' size, once the
image is at the training scale. Fields overlap by a quarter so a cell cut by one
field's edge lies whole in its neighbour. An image shorter than a field on a side
is padded by reflection (stretching it would undo the rescale).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

FIELD_SIZE = 224
OVERLAP = 0.25
MIN_CELL_FRACTION = 0.05
"""A field whose cell mask covers less than this is background and is not scored."""


@dataclass(frozen=True)
class Box:
    """A field's top-left corner in the rescaled image."""

    x: int
    y: int


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (box filter when shrinking, bilinear when enlarging)."""
    if factor == 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    method = Image.BOX if factor < 1 else Image.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size, method), dtype=np.uint8)


def pad_to_field(rgb: np.ndarray, field: int = FIELD_SIZE) -> tuple[np.ndarray, Box]:
    """Reflect-pad an image shorter than one field on either side up to the field size; also
    returns where the image's own pixels start in the padded one."""
    height, width = rgb.shape[:2]
    pad_y, pad_x = max(0, field - height), max(0, field - width)
    if not pad_y and not pad_x:
        return rgb, Box(0, 0)
    padded = np.pad(rgb, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)),
                    mode="symmetric")
    return padded, Box(pad_x // 2, pad_y // 2)


def starts(length: int, field: int = FIELD_SIZE, overlap: float = OVERLAP) -> list[int]:
    """Field start offsets along one side: evenly spread, first at 0, last flush with the end."""
    if length <= field:
        return [0]
    stride = field * (1 - overlap)
    count = int(np.ceil((length - field) / stride)) + 1
    return [int(round(i * (length - field) / (count - 1))) for i in range(count)]


def field_boxes(height: int, width: int, field: int = FIELD_SIZE) -> list[Box]:
    """Every field of an image of this size (already padded to at least one field)."""
    return [Box(x, y) for y in starts(height, field) for x in starts(width, field)]


def cell_fractions(mask: np.ndarray, boxes: list[Box], shape: tuple[int, int], field: int = FIELD_SIZE) -> np.ndarray:
    """The cell-covered fraction of each field, from a cell mask of any resolution covering the image."""
    fy, fx = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
    fractions = []
    for box in boxes:
        y0, x0 = int(box.y * fy), int(box.x * fx)
        y1, x1 = max(y0 + 1, int((box.y + field) * fy)), max(x0 + 1, int((box.x + field) * fx))
        fractions.append(float(mask[y0:y1, x0:x1].mean()))
    return np.asarray(fractions)
