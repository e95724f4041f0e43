"""Finding image files and decoding them into RGB arrays, turning bad input into clear errors."""

import hashlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from allscan import _libtiff

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 50_000_000
"""Images above this many pixels are refused (a smear field is far smaller)."""
MAX_FILE_BYTES = 1 << 30
"""Files above this many bytes (1 GiB) are refused before they are read: an image of :data:`MAX_PIXELS` holds at
most 800 MB even as uncompressed floating-point RGBA, and a whole-slide scan of several GB read whole by each
decoding thread could exhaust a lab PC's memory."""
MIN_SIDE = 64
"""Images narrower or lower than this many pixels are refused: too little of a field to call."""

DECODE_MAX_SIDE = 2048
"""A larger JPEG is decoded reduced (libjpeg's DCT scaling, 1/2 to 1/8) to at least this long side:
ample for smears, whose cells are brought down to the training scale anyway, and a 20-megapixel
photo then needs a fraction of its full-size memory."""

OUTPUT_MARKERS = (".allscan.sqlite", ".run.json", ".allscan-tmp")

OWN_FIGURE_SOFTWARE = "allscan"
"""Start of the ``Software`` text chunk in every PNG figure allscan writes: however it is named or
wherever it lies, such a file is not a smear."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD_BYTES = 4096
"""Pillow writes text chunks before the image data: the start of a figure holds its marker."""


class ImageError(Exception):
    """An input file that cannot be scored; the message is shown in the results row."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, ready to be resized for each model.

    Attributes:
        path: The file as found.
        sha256: Hex digest of the file's bytes (identifies the image across names).
        width: Original width in pixels.
        height: Original height in pixels.
        rgb: ``(height, width, 3)`` uint8 array, EXIF orientation applied.
        reduction: Size of ``rgb`` relative to the file's own pixels (below 1 when a large JPEG
            was decoded reduced).
        pages: Pages or frames in the file (a multi-page TIFF, an animated PNG); the first is decoded.
    """

    path: Path
    sha256: str
    width: int
    height: int
    rgb: np.ndarray
    reduction: float = 1.0
    pages: int = 1


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an input image: a known suffix, not hidden, not one of our outputs (by name,
    or a figure by its marker)."""
    name = path.name
    if name.startswith(".") or any(marker in name for marker in OUTPUT_MARKERS):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES and not _is_own_figure(path)


def _is_own_figure(path: Path) -> bool:
    """Whether ``path`` is a PNG that allscan wrote (its ``Software`` text chunk says so).

    Reads the file's first few KB, and only for a PNG; a file that cannot be read is not ours
    (its row will say why it cannot be scored).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PNG_HEAD_BYTES)
    except OSError:
        return False
    if not head.startswith(_PNG_SIGNATURE):
        return False
    wanted = b"Software\0" + OWN_FIGURE_SOFTWARE.encode()
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = int.from_bytes(head[at:at + 4], "big"), head[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            return False
        if kind == b"tEXt" and head[at + 8:at + 8 + length].startswith(wanted):
            return True
        at += 12 + length
    return False


def find_images(
    paths: Iterable[Path], recursive: bool = True, exclude: Iterable[Path] = (), exclude_dirs: Iterable[Path] = ()
) -> list[Path]:
    """List the image files in ``paths`` (files or folders), sorted, without duplicates.

    Hidden files and folders, the tool's own output files (``exclude``) and anything
    under ``exclude_dirs`` (e.g. the heatmaps folder) are never picked up. A symlinked
    folder is followed once at most, by its real path, after the real folders, so a link
    loop ends and a folder reached twice is listed once. A symlink to a file, wherever
    the file lies, counts as an image under the link's name. A folder that cannot be listed
    (e.g. no read permission) is listed itself: reading it gives an error row saying so, and the
    run goes on.

    Raises:
        FileNotFoundError: A given path does not exist.
    """
    return sorted(dict.fromkeys(_images(paths, recursive, exclude, exclude_dirs)))


def has_images(paths: Iterable[Path], recursive: bool = True) -> bool:
    """Whether :func:`find_images` would list anything, stopping at the first image found.

    Raises:
        FileNotFoundError: A given path does not exist.
    """
    return next(_images(paths, recursive), None) is not None


def other_suffixes(paths: Iterable[Path], recursive: bool = True) -> Counter:
    """How many files under ``paths`` of each suffix (lower case, ``""`` for none) are not images allscan reads;
    allscan's own figures count apart, as ``".png written by allscan"``."""
    counts: Counter = Counter()
    for path in _files(paths, recursive):
        if path.is_file() and not is_image_file(path):
            suffix = path.suffix.lower()
            counts[f"{suffix} written by allscan" if suffix in IMAGE_SUFFIXES else suffix] += 1
    return counts


def _images(paths: Iterable[Path], recursive: bool, exclude: Iterable[Path] = (),
            exclude_dirs: Iterable[Path] = ()) -> Iterator[Path]:
    """:func:`find_images`'s paths in the order found, possibly repeated."""
    excluded = {Path(p).resolve() for p in exclude}
    excluded_dirs = [Path(d).resolve() for d in exclude_dirs]
    for path in _files(paths, recursive):
        resolved = path.resolve()
        if resolved in excluded or any(resolved.is_relative_to(d) for d in excluded_dirs):
            continue
        if path.is_dir() or (path.is_file() and is_image_file(path)):
            yield path


def _files(paths: Iterable[Path], recursive: bool) -> Iterator[Path]:
    """Each given file, and the files under each given folder (:func:`_walk`; a folder that cannot be listed
    is yielded itself).

    Raises:
        FileNotFoundError: A given path does not exist.
    """
    scanned: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        yield from [root] if root.is_file() else _walk(root, recursive, scanned)


def _walk(root: Path, recursive: bool, scanned: set[Path]) -> Iterator[Path]:
    """Files under ``root``; each folder is scanned once by real path, symlinked folders last."""
    folders, linked = [root], []
    while folders or linked:
        folder = folders.pop() if folders else linked.pop(0)
        real = folder.resolve()
        if real in scanned:
            continue
        scanned.add(real)
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            yield folder  # listed as it is, so that its row says why its images were not scored
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive:
                    (linked if entry.is_symlink() else folders).append(entry)
            else:
                yield entry


def decode_bytes(data: bytes, path: Path, max_side: int | None = None) -> DecodedImage:
    """Decode image bytes to 8-bit RGB, converting odd modes and applying EXIF orientation.

    With ``max_side``, a JPEG larger than that is decoded reduced, to no less than ``max_side``
    on its long side; ``width`` and ``height`` stay the file's own.

    Raises:
        ImageError: Empty, not an image, truncated, corrupt or too large.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise ImageError("empty file")
    _libtiff.silence()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd metadata: the row says what matters
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"image too large: {image.width}x{image.height} pixels (limit {MAX_PIXELS:,})"
                    )
                full_width, full_height = image.size
                pages = int(getattr(image, "n_frames", 1))
                if max_side and max(image.size) > max_side and image.format == "JPEG":
                    k = max_side / max(image.size)
                    image.draft("RGB", (int(image.width * k) + 1, int(image.height * k) + 1))
                reduction = image.width / full_width
                image.load()
                image = ImageOps.exif_transpose(image)
                check_min_side(image.width, image.height)
                rgb = _to_rgb(image)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except OSError as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    except (ValueError, SyntaxError) as err:
        raise ImageError(f"unreadable image: {err}") from None
    except MemoryError:
        raise ImageError("image too large to decode in the memory available") from None
    except Exception as err:  # Pillow's decoders raise many other types on hostile input
        raise ImageError(f"unreadable image: {type(err).__name__}: {err}") from None
    height, width = rgb.shape[:2]
    if reduction != 1.0:
        swapped = (width >= height) != (full_width >= full_height)  # EXIF orientation turned it
        width, height = (full_height, full_width) if swapped else (full_width, full_height)
    return DecodedImage(path, digest, width, height, rgb, reduction, pages)


def decode_array(rgb: np.ndarray, path: Path) -> DecodedImage:
    """Take an in-memory image (``(height, width, 3)`` uint8 RGB) as if decoded from a file named ``path``.

    Its sha256 is the digest of its shape and pixels, so equal arrays share a score. The size limits
    are a file's.

    Raises:
        ImageError: Not a non-empty uint8 RGB array, too large, or too small.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.size:
        layout = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f"not an RGB image array: expected uint8 (height, width, 3), got {layout}")
    height, width = rgb.shape[:2]
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
    check_min_side(width, height)
    rgb = np.ascontiguousarray(rgb)
    digest = hashlib.sha256(f"{height}x{width}x3:".encode() + rgb.tobytes()).hexdigest()
    return DecodedImage(Path(path), digest, width, height, rgb)


def check_min_side(width: int, height: int) -> None:
    """Refuse an image under :data:`MIN_SIDE` pixels on either side, file or array alike.

    Raises:
        ImageError: It is too small.
    """
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} pixels (at least {MIN_SIDE} a side)")


def decode_file(path: Path, max_side: int | None = None) -> DecodedImage:
    """Read and decode one image file (see :func:`decode_bytes` for ``max_side``).

    Raises:
        ImageError: The file cannot be read or decoded.
    """
    return decode_bytes(read_file(path), Path(path), max_side)


def read_file(path: Path) -> bytes:
    """An image file's bytes.

    Raises:
        ImageError: It cannot be read (also when it is a folder that could not be listed).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(f"file too large: {size / (1 << 30):.1f} GiB (limit {MAX_FILE_BYTES >> 30} GiB);"
                                 " allscan scores smear fields and camera images, not whole-slide scans")
            return handle.read()
    except IsADirectoryError:
        raise ImageError(_unlisted_folder(Path(path))) from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None


def _unlisted_folder(path: Path) -> str:
    try:
        next(path.iterdir(), None)
    except OSError as err:
        return f"folder cannot be listed ({err.strerror or err}): none of its images were scored"
    return "a folder, not an image file"


def _to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB from any Pillow mode; 16-bit and float images are rescaled, alpha goes on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        gray = np.clip(values / high * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"unsupported image layout {rgb.shape}")
    return rgb


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB array to ``size``×``size`` with Pillow's antialiased bilinear filter.

    Training, evaluation and inference all resize through this one function.
    """
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)
