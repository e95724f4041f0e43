"""Finding image files and decoding them into RGB arrays, turning bad input into clear errors."""

import functools
import hashlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageCms

from allscan import _libtiff

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""What allscan reads: JPEG under each of its names (browsers on Windows save ``.jfif``), PNG, BMP, TIFF, WebP."""
OTHER_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".gif", ".jp2", ".j2k", ".jxl", ".dng", ".cr2", ".nef",
                                  ".arw", ".raw", ".psd", ".svs", ".ndpi", ".scn", ".mrxs", ".czi", ".vsi", ".dcm"})
"""Image and slide formats allscan does not read: a run says how many it left out (phone photos, camera raw
files, whole-slide scans, DICOM)."""
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

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_PROFILE_PROBE = Image.fromarray(
    np.stack(np.meshgrid(*[np.linspace(0, 255, 17).round().astype(np.uint8)] * 3), axis=-1).reshape(17, 289, 3)
)
"""A 17-step grid of RGB colours: an embedded profile that maps each within one level of itself is sRGB."""
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""How to turn an image of each EXIF orientation upright (1, or none, is upright); 5 to 8 swap its sides."""


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
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_own_figure(path)


def is_own_figure(path: Path) -> bool:
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
    the file lies, counts as an image under the link's name, as does one whose target is missing (an
    unmounted share): reading it gives an error row saying so. A folder that cannot be listed
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
    images allscan does not read for their name count apart, as ``".png written by allscan"`` (its figures and
    outputs) or ``"hidden .jpg"``, and so do links whose target is missing, as ``"with a missing link
    target"``."""
    counts: Counter = Counter()
    for path in _files(paths, recursive):
        if _is_dangling_link(path) and not is_image_file(path):
            counts["with a missing link target"] += 1
        elif path.is_file() and not is_image_file(path):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                suffix = f"hidden {suffix}" if path.name.startswith(".") else f"{suffix} written by allscan"
            counts[suffix] += 1
    return counts


def unread_images(paths: Iterable[Path], recursive: bool = True) -> Counter:
    """How many files under ``paths`` of each of :data:`OTHER_IMAGE_SUFFIXES` a run leaves out (by name alone:
    unlike :func:`other_suffixes`, it opens no file)."""
    return Counter(suffix for path in _files(paths, recursive)
                   if (suffix := path.suffix.lower()) in OTHER_IMAGE_SUFFIXES and path.is_file())


def _images(paths: Iterable[Path], recursive: bool, exclude: Iterable[Path] = (),
            exclude_dirs: Iterable[Path] = ()) -> Iterator[Path]:
    """:func:`find_images`'s paths in the order found, possibly repeated."""
    excluded = {Path(p).resolve() for p in exclude}
    excluded_dirs = [Path(d).resolve() for d in exclude_dirs]
    for path in _files(paths, recursive):
        resolved = path.resolve()
        if resolved in excluded or any(resolved.is_relative_to(d) for d in excluded_dirs):
            continue
        if path.is_dir() or ((path.is_file() or _is_dangling_link(path)) and is_image_file(path)):
            yield path


def _is_dangling_link(path: Path) -> bool:
    """Whether ``path`` is a symlink whose target is missing (e.g. on a share that is not mounted)."""
    return path.is_symlink() and not path.exists()


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
    """Decode image bytes to 8-bit sRGB, converting odd modes and colour profiles and applying EXIF orientation.

    With ``max_side``, a JPEG larger than that is decoded reduced, to no less than ``max_side`` on its long
    side and :data:`MIN_SIDE` on its short side; ``width``, ``height`` and the size limits are the file's own.

    Raises:
        ImageError: Empty, not an image, truncated, corrupt, too large or too small.
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
                check_max_pixels(*image.size)
                deep = _is_rgb_16_bit(image)  # before reading a PNG's EXIF, which decodes it
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                file_width = image.width
                width, height = (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size
                check_min_side(width, height)
                pages = int(getattr(image, "n_frames", 1))
                if max_side and image.format == "JPEG":
                    _draft(image, max_side)
                reduction = image.width / file_width
                image.load()
                rgb = _upright(_to_rgb(_rgb_16_bit(image, data) if deep else image), orientation)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(_too_large(data)) from None
    except OSError as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    except (ValueError, SyntaxError) as err:
        raise ImageError(f"unreadable image: {err}") from None
    except MemoryError:
        raise ImageError("image too large to decode in the memory available") from None
    except Exception as err:  # Pillow's decoders raise many other types on hostile input
        raise ImageError(f"unreadable image: {type(err).__name__}: {err}") from None
    return DecodedImage(path, digest, width, height, rgb, reduction, pages)


def _draft(image: Image.Image, max_side: int) -> None:
    """Have a JPEG over ``max_side`` decoded reduced, its long side to no less than ``max_side`` and its short
    side to no less than :data:`MIN_SIDE` (a thin strip keeps the pixels that make it a field)."""
    if max(image.size) <= max_side:
        return
    k = max(max_side / max(image.size), MIN_SIDE / min(image.size))
    image.draft("RGB", (int(image.width * k) + 1, int(image.height * k) + 1))


def _upright(rgb: np.ndarray, orientation: object) -> np.ndarray:
    """``rgb`` turned as its EXIF ``orientation`` says it is displayed."""
    method = _UPRIGHT.get(orientation)
    return rgb if method is None else np.asarray(Image.fromarray(rgb).transpose(method))


def _too_large(data: bytes) -> str:
    """The reason an image over Pillow's decompression-bomb limit (above :data:`MAX_PIXELS`) is refused."""
    size = _header_size(data)
    if size is None:
        return f"image too large (over the limit of {MAX_PIXELS:,} pixels)"
    return f"image too large: {size[0]}x{size[1]} pixels (limit {MAX_PIXELS:,})"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """An image's size from its header, read as :func:`PIL.Image.open` does but without Pillow's own
    decompression-bomb check, which refuses an image without saying its size; None if no format reads it."""
    Image.init()
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            with factory(io.BytesIO(data)) as image:
                return image.size
        except Exception:  # as in Image.open: a format that cannot read it leaves it to the next
            continue
    return None


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
    check_max_pixels(width, height)
    check_min_side(width, height)
    rgb = np.ascontiguousarray(rgb)
    digest = hashlib.sha256(f"{height}x{width}x3:".encode() + rgb.tobytes()).hexdigest()
    return DecodedImage(Path(path), digest, width, height, rgb)


def check_max_pixels(width: int, height: int) -> None:
    """Refuse an image over :data:`MAX_PIXELS`, file or array alike.

    Raises:
        ImageError: It is too large.
    """
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")


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
    except FileNotFoundError as err:
        if _is_dangling_link(Path(path)):
            raise ImageError(f"link target missing: {Path(path).resolve()}") from None
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None


def _unlisted_folder(path: Path) -> str:
    try:
        next(path.iterdir(), None)
    except OSError as err:
        return f"folder cannot be listed ({err.strerror or err}): none of its images were scored"
    return "a folder, not an image file"


def _to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit sRGB from any Pillow mode: 16-bit and float images are rescaled (:func:`_from_16_bit`), alpha goes
    on white, and an RGB image's embedded colour profile is honoured (:func:`_to_srgb`)."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.repeat(_from_16_bit(np.asarray(image))[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values / max(float(values.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    icc = image.info.get("icc_profile")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    if icc:
        image = _to_srgb(image, icc)
    rgb = np.asarray(image, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"unsupported image layout {rgb.shape}")
    return rgb


def _is_rgb_16_bit(image: Image.Image) -> bool:
    """Whether the not yet loaded ``image`` holds 16-bit RGB(A) samples, which Pillow decodes to their high
    bytes."""
    args = image.tile[0].args if image.tile else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and rawmode.startswith(("RGB;16", "RGBA;16", "RGBX;16"))


def _rgb_16_bit(image: Image.Image, data: bytes) -> Image.Image:
    """The 16-bit RGB(A) ``image`` decoded from ``data`` again with all its bits (:func:`_from_16_bit`), alpha
    on white, keeping its colour profile; ``image`` itself if OpenCV cannot read it so."""
    values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if values is None or values.dtype != np.uint16 or values.ndim != 3 or values.shape[2] not in (3, 4) \
            or values.shape[:2] != (image.height, image.width):
        return image
    rgb = _from_16_bit(values[..., 2::-1])
    if values.shape[2] == 4:
        alpha = values[..., 3:] / 65535.0
        rgb = np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    deep = Image.fromarray(rgb)
    deep.info.update({key: image.info[key] for key in ("icc_profile",) if key in image.info})
    return deep


def _from_16_bit(values: np.ndarray) -> np.ndarray:
    """8-bit values from 16-bit samples, scaled by the smallest camera depth (10, 12, 14 or 16 bits) that holds
    the brightest of them.

    A TIFF declares 16 bits a sample whether the camera filled 12 of them or all 16 (no tag says which), and a
    PNG's ``sBIT`` chunk declares the depth of samples already scaled up to 16 bits: only the values tell.
    Read as 16 bits, 12-bit data would be a near-black field. A true 16-bit field is read as less than 16 bits only when
    its brightest pixel is under a quarter of the full range: a field near black however it is read, whereas
    a bright-field smear's background is the brightest part of any exposure that can be scored.
    """
    high = next(2.0**bits - 1 for bits in (10, 12, 14, 16) if values.max(initial=0) < 2**bits)
    return np.clip(values / high * 255.0, 0, 255).astype(np.uint8)


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """An RGB image whose values are in the colour space of the ICC profile ``icc``, converted to sRGB
    (unchanged where :func:`_srgb_transform` finds nothing to convert)."""
    transform = _srgb_transform(icc)
    return image if transform is None else ImageCms.applyTransform(image, transform)


@functools.lru_cache(maxsize=8)
def _srgb_transform(icc: bytes) -> ImageCms.ImageCmsTransform | None:
    """The transform from the ICC profile ``icc`` to sRGB, made once per profile (a camera tags every image
    with the same one); without LittleCMS's one-pixel cache, so that the decode threads can share it.

    The models learned sRGB colours, as a colour-managed viewer shows them: an image tagged Adobe RGB or
    ProPhoto holds other numbers for the same stain. The relative colorimetric intent keeps every colour
    that sRGB can show exactly as the profile says (the stains, and all of an image that was sRGB before
    it was tagged) and clips only the few beyond sRGB's gamut; the perceptual intent would compress all
    colours to make room for those few, and a matrix profile, the usual kind, has no perceptual table.

    None, for the image to stay as it is, when the profile is sRGB or close to it (a trial grid of colours
    moves by one level at most), so that an sRGB-tagged image decodes as an untagged one; when it is not an
    RGB profile (a grey or CMYK one: such images are converted as before); and when it is corrupt or lcms
    cannot use it: the raw values are then the best reading of the image.
    """
    try:
        profile = ImageCms.getOpenProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space != "RGB ":
            return None
        transform = ImageCms.buildTransform(profile, _SRGB, "RGB", "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                            flags=ImageCms.Flags.NOCACHE)
        probe = np.asarray(ImageCms.applyTransform(_PROFILE_PROBE, transform), dtype=np.int16)
        if np.abs(probe - np.asarray(_PROFILE_PROBE, dtype=np.int16)).max() <= 1:
            return None
        return transform
    except ImageCms.PyCMSError:
        return None


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB array to ``size``×``size`` with Pillow's antialiased bilinear filter.

    Training, evaluation and inference all resize through this one function.
    """
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)
