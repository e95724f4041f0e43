"""Labelled image folders (``SPLIT/{normal,ALL}/*``) for training and evaluation.

The Aria dataset burns a scale-bar label into each field's bottom-right corner
whose colour differs by class; :func:`blank_box` removes it when loading.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.images import decode_file, find_images, resize

CLASSES = ("normal", "ALL")
"""Class folder names; the index is the label (ALL = 1 is the positive class)."""

ARIA_LABEL_BOX = (185, 203, 223, 222)
"""``x0, y0, x1, y1`` (x1, y1 exclusive) of the Aria scale-bar label in a 224×224 field."""

_RING = 4


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """Parse ``"x0,y0,x1,y1"`` (or ``"none"``) into a box tuple."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4 or parts[0] >= parts[2] or parts[1] >= parts[3] or min(parts) < 0:
        raise ValueError(f"a box is x0,y0,x1,y1 with x0<x1 and y0<y1, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def scale_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """A box given in 224×224 field coordinates, scaled to a ``width``×``height`` image and clipped to it."""
    sx, sy = width / 224.0, height / 224.0
    return (int(round(box[0] * sx)), int(round(box[1] * sy)),
            min(width, int(round(box[2] * sx))), min(height, int(round(box[3] * sy))))


def blank_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Fill ``box`` with the field's background colour: the median of a ring around it.

    The box is given in 224×224 coordinates and scaled to the image's size.
    """
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = scale_box(box, width, height)
    ring = np.zeros((height, width), dtype=bool)
    ring[max(0, y0 - _RING) : min(height, y1 + _RING), max(0, x0 - _RING) : min(width, x1 + _RING)] = True
    ring[y0:y1, x0:x1] = False
    out = rgb.copy()
    fill = np.median(rgb[ring], axis=0) if ring.any() else np.array([255, 255, 255])
    out[y0:y1, x0:x1] = fill.astype(np.uint8)
    return out


@dataclass(frozen=True)
class LabelledSet:
    """Images of one split, decoded and resized, with their labels (1 = ALL)."""

    paths: tuple[Path, ...]
    images: np.ndarray
    labels: np.ndarray


def list_split(root: Path) -> tuple[list[Path], np.ndarray]:
    """Image paths under ``root/normal`` and ``root/ALL`` with their labels.

    Raises:
        FileNotFoundError: Neither class folder holds images.
    """
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CLASSES):
        folder = Path(root) / name
        if folder.is_dir():
            found = find_images([folder])
            paths += found
            labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(f"no images under {root}/normal or {root}/ALL")
    return paths, np.asarray(labels, dtype=np.int32)


def load_images(
    paths: Sequence[Path], size: int, box: tuple[int, int, int, int] | None, workers: int = 4
) -> np.ndarray:
    """Decode, optionally blank the label box, and resize to ``size``; ``(n, size, size, 3)`` uint8."""

    def one(path: Path) -> np.ndarray:
        rgb = decode_file(path).rgb
        if box is not None:
            rgb = blank_box(rgb, box)
        return resize(rgb, size)

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, paths)))


def load_split(root: Path, size: int, box: tuple[int, int, int, int] | None) -> LabelledSet:
    """Load one split folder at ``size`` pixels."""
    paths, labels = list_split(root)
    return LabelledSet(tuple(paths), load_images(paths, size, box), labels)
