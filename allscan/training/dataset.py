"""Labelled image folders (``SPLIT/{normal,ALL}/*``) for training and evaluation.

The Aria dataset burns a scale-bar label into each field's bottom-right corner
whose colour differs by class; :func:`blank_box` removes it when loading.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from allscan.images import ImageError, decode_file, find_images, has_images, resize, unread_images
from allscan.models.manifest import sha256_file
from allscan.paths import path_text

T = TypeVar("T")

CLASSES = ("normal", "ALL")
"""Class folder names; the index is the label (ALL = 1 is the positive class)."""

ARIA_LABEL_BOX = (185, 203, 223, 222)
"""``x0, y0, x1, y1`` (x1, y1 exclusive) of the Aria scale-bar label in a 224×224 field."""

_RING = 4
_NAMED_UNREADABLE = 3
"""How many unreadable files a refusal names before it counts the rest."""


class DatasetError(ValueError):
    """A labelled split that cannot be used as it is: a class folder missing or empty, or images that cannot
    be read; the message names the folders found or the files."""


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


def sub_folders(root: Path) -> list[str]:
    """The names of ``root``'s sub-folders that are not hidden, as ``ALL/`` (text every output can hold), sorted."""
    return sorted(f"{path_text(p.name)}/" for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def found_folders(root: Path) -> str:
    """The sub-folders of ``root`` in words (``found ALL/, Normal/``), for messages about class folders."""
    if not Path(root).is_dir():
        return "no such folder"
    names = sub_folders(root)
    return f"found {', '.join(names)}" if names else "found no folders"


def classes_present(root: Path) -> tuple[str, ...]:
    """The class folders of ``root`` (``normal/``, ``ALL/``; names are case-sensitive) that hold an image."""
    return tuple(name for name in CLASSES if (Path(root) / name).is_dir() and has_images([Path(root) / name]))


def check_classes(root: Path, both: bool = True) -> tuple[str, ...]:
    """The class folders of ``root`` that hold images, checked before anything loads: both, or with
    ``both=False`` (a split to evaluate) at least one.

    A model trained, or a calibration fitted, on one class is meaningless, and a misspelt class folder
    (``Normal/``) would otherwise be skipped without a word.

    Raises:
        DatasetError: A needed class folder is missing or holds no images; the message names the folders found.
    """
    present = classes_present(root)
    if not present:
        raise _no_images(root)
    if both and len(present) < len(CLASSES):
        missing = next(name for name in CLASSES if name not in present)
        raise DatasetError(f"{root} needs images in both normal/ and ALL/; none in {missing}/ ({found_folders(root)})")
    return present


def list_split(root: Path) -> tuple[list[Path], np.ndarray]:
    """Image paths under ``root/normal`` and ``root/ALL`` with their labels.

    Raises:
        DatasetError: Neither class folder holds images.
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
        raise _no_images(root)
    return paths, np.asarray(labels, dtype=np.int32)


def left_out(root: Path) -> tuple[list[Path], Counter]:
    """What a split leaves out without a word: the images under ``root`` outside its class folders (``all/``
    beside ``ALL/``, a folder ``Pro/`` left from sorting), and how many files of each image format it does not
    read (``.heic`` phone photos) lie in them."""
    classes = [Path(root) / name for name in CLASSES if (Path(root) / name).is_dir()]
    inside = set(find_images(classes))
    return [path for path in find_images([root]) if path not in inside], unread_images(classes)


def same_content(first: Sequence[Path], second: Sequence[Path]) -> list[tuple[Path, Path]]:
    """The files of ``first`` whose content (sha256) is that of a file of ``second``, each paired with one such
    file. Only files of a size found in both are read; a file that cannot be read is left to the decoding to name.
    """
    by_size: dict[int, list[Path]] = {}
    for path in second:
        size = _size(path)
        if size is not None:
            by_size.setdefault(size, []).append(path)
    digests: dict[Path, str | None] = {}

    def digest(path: Path) -> str | None:
        if path not in digests:
            try:
                digests[path] = sha256_file(path)
            except OSError:
                digests[path] = None
        return digests[path]

    pairs = []
    for path in first:
        candidates = by_size.get(_size(path), [])
        known = digest(path) if candidates else None
        twin = next((other for other in candidates if digest(other) == known), None) if known else None
        if twin is not None:
            pairs.append((path, twin))
    return pairs


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _no_images(root: Path) -> DatasetError:
    return DatasetError(f"no images in {root}/normal/ or {root}/ALL/ ({found_folders(root)})")


def read_all(paths: Sequence[Path], prepare: Callable[[np.ndarray], T], workers: int = 4) -> list[T]:
    """Decode every image and ``prepare`` each; every image must decode.

    A training or evaluation set is curated, and its size goes into the manifest and the figures: leaving a
    file out (as ``adapt`` and ``predict`` do with a lab's own images) would quietly train or measure on
    another set than the one listed. So the set is refused, naming the unreadable files, for the lab to
    fix or remove them.

    Raises:
        DatasetError: Some images cannot be read or decoded.
    """

    def one(path: Path) -> T | str:
        try:
            return prepare(decode_file(path).rgb)
        except ImageError as err:
            return str(err)

    with ThreadPoolExecutor(workers) as pool:
        read = list(pool.map(one, paths))
    unreadable = [(path, item) for path, item in zip(paths, read) if isinstance(item, str)]
    if unreadable:
        raise DatasetError(_unreadable_message(unreadable))
    return read


def _unreadable_message(unreadable: list[tuple[Path, str]]) -> str:
    (first, reason), rest = unreadable[0], [p for p, _ in unreadable[1:]]
    named = ", ".join(str(p) for p in rest[: _NAMED_UNREADABLE - 1])
    more = len(rest) - (_NAMED_UNREADABLE - 1)
    others = f"; also {named}" + (f" and {more} more" if more > 0 else "") if rest else ""
    return (f"cannot read {first} ({reason}){others}: every image of a training or evaluation set must be"
            " readable; fix or remove the file" + ("s" if rest else ""))


def load_images(
    paths: Sequence[Path], size: int, box: tuple[int, int, int, int] | None, workers: int = 4
) -> np.ndarray:
    """Decode, optionally blank the label box, and resize to ``size``; ``(n, size, size, 3)`` uint8.

    Raises:
        DatasetError: Some images cannot be read (see :func:`read_all`).
    """

    def prepare(rgb: np.ndarray) -> np.ndarray:
        return resize(blank_box(rgb, box) if box is not None else rgb, size)

    return np.stack(read_all(paths, prepare, workers))


def load_split(root: Path, size: int, box: tuple[int, int, int, int] | None) -> LabelledSet:
    """Load one split folder at ``size`` pixels."""
    paths, labels = list_split(root)
    return LabelledSet(tuple(paths), load_images(paths, size, box), labels)
