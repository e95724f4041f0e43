"""Decoding faults a tester found: colour profiles, 12-bit camera data, thin and near-square large JPEGs,
links whose target is missing, and images over the pixel limit."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from allscan.images import (
    DECODE_MAX_SIDE,
    MAX_PIXELS,
    ImageError,
    decode_bytes,
    decode_file,
    find_images,
    other_suffixes,
)
from allscan.run.preflight import PreflightError, check_images_found
from tests.utils import smear, write_image

STAINS = np.array([[235, 230, 238], [120, 60, 160], [200, 90, 140], [60, 40, 120], [250, 200, 210]], dtype=np.uint8)


def _stained(size: int = 80) -> np.ndarray:
    """A field of saturated stain colours, where a colour space changes the numbers most."""
    rows = np.arange(size * size).reshape(size, size) // (size * size // len(STAINS) + 1)
    return STAINS[rows]


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _tag(kind: bytes, body: bytes) -> bytes:
    return kind + b"\0" * 4 + body + b"\0" * (-(8 + len(body)) % 4)


def _matrix_profile(name: str, red, green, blue, gamma: float) -> bytes:
    """An ICC v2 RGB matrix profile (D50 white, one gamma), as Adobe RGB and ProPhoto are built."""
    def xyz(x, y, z):
        return _tag(b"XYZ ", _s15(x) + _s15(y) + _s15(z))

    text = name.encode() + b"\0"
    curve = _tag(b"curv", struct.pack(">IH", 1, round(gamma * 256)))
    tags = [(b"desc", _tag(b"desc", struct.pack(">I", len(text)) + text + b"\0" * 79)),
            (b"cprt", _tag(b"text", b"none\0")), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(*red)), (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*blue)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acspAPPL" + b"\0" * 20 + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + body


ADOBE_LIKE = _matrix_profile("Adobe RGB (1998) compatible", (0.60974, 0.31111, 0.01947),
                             (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457), 563 / 256)
PROPHOTO_LIKE = _matrix_profile("ProPhoto-like", (0.7977, 0.2880, 0.0), (0.1352, 0.7119, 0.0),
                                (0.0313, 0.0001, 0.8249), 1.8)


def _in_profile(rgb: np.ndarray, icc: bytes) -> Image.Image:
    """The sRGB ``rgb`` converted into the colour space of ``icc``: what an editor saves as "Adobe RGB"."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    transform = ImageCms.buildTransform(srgb, ImageCms.getOpenProfile(io.BytesIO(icc)), "RGB", "RGB",
                                        ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return ImageCms.applyTransform(Image.fromarray(rgb), transform)


@pytest.mark.parametrize("icc", [ADOBE_LIKE, PROPHOTO_LIKE], ids=["adobe-rgb", "prophoto"])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_an_image_tagged_with_a_wide_gamut_profile_decodes_to_its_srgb_colours(icc, fmt):
    original = _stained()
    wide = _in_profile(original, icc)
    assert np.abs(np.asarray(wide, dtype=int) - original).max() > 10  # the numbers in the file differ

    decoded = decode_bytes(_encode(wide, fmt, icc_profile=icc), None).rgb
    assert np.abs(decoded.astype(int) - original).max() <= 2


def test_an_untagged_or_srgb_tagged_image_decodes_bit_identical():
    original = smear(3, 80)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for extra in ({}, {"icc_profile": srgb}):
        assert np.array_equal(decode_bytes(_encode(Image.fromarray(original), "PNG", **extra), None).rgb, original)


@pytest.mark.parametrize("icc", [b"not a colour profile" * 10, ADOBE_LIKE[:200]], ids=["garbage", "truncated"])
def test_a_corrupt_profile_still_decodes_its_raw_pixels(icc):
    original = _stained()
    decoded = decode_bytes(_encode(Image.fromarray(original), "PNG", icc_profile=icc), None)
    assert np.array_equal(decoded.rgb, original)


def _png_16_bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG (RGB, or grey for a 2-D array) holding ``values`` as they are, as a camera writes them."""
    height, width = values.shape[:2]
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if values.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _tiff_16_bit(values: np.ndarray) -> bytes:
    """An uncompressed 16-bit RGB TIFF holding ``values`` as they are."""
    height, width = values.shape[:2]
    pixels = values.astype("<u2").tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 8 + 2 + 12 * 9 + 4), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8 + 2 + 12 * 9 + 4 + 6), (277, 3, 1, 3), (278, 3, 1, height),
               (279, 4, 1, len(pixels))]
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHIHH" if kind == 3 and count == 1 else "<HHII", tag, kind, count, value,
                    *([0] if kind == 3 and count == 1 else []))
        for tag, kind, count, value in entries)
    return b"II*\0" + struct.pack("<I", 8) + directory + b"\0" * 4 + struct.pack("<3H", 16, 16, 16) + pixels


@pytest.mark.parametrize("bits", [12, 14, 16])
@pytest.mark.parametrize("layout", ["png-rgb", "tiff-rgb", "png-grey"])
def test_camera_data_in_16_bit_files_decodes_at_its_own_depth(bits, layout):
    original = smear(5, 80)
    values = (original.astype(np.int64) * (2**bits - 1) // 255).astype(np.uint16)
    data = {"png-rgb": lambda: _png_16_bit(values), "tiff-rgb": lambda: _tiff_16_bit(values),
            "png-grey": lambda: _png_16_bit(values[..., 0])}[layout]()
    expected = original if layout.endswith("rgb") else np.repeat(original[..., :1], 3, axis=2)

    decoded = decode_bytes(data, None).rgb
    assert np.abs(decoded.astype(int) - expected).max() <= 1  # not the near-black of its high bytes


def _jpeg(width: int, height: int) -> bytes:
    field = Image.fromarray(smear(6, 64)).resize((width, height), Image.NEAREST)
    return _encode(field, "JPEG", quality=60)


def test_a_thin_large_jpeg_is_scored_not_refused_as_too_small():
    decoded = decode_bytes(_jpeg(6000, 100), None, max_side=DECODE_MAX_SIDE)
    assert (decoded.width, decoded.height) == (6000, 100)
    assert min(decoded.rgb.shape[:2]) >= 64


def test_a_jpeg_too_small_is_refused_with_its_own_size():
    with pytest.raises(ImageError, match="image too small: 6000x40 pixels"):
        decode_bytes(_jpeg(6000, 40), None, max_side=DECODE_MAX_SIDE)


@pytest.mark.parametrize(("orientation", "size"), [(1, (4099, 4100)), (6, (4100, 4099)), (3, (4099, 4100))])
def test_a_near_square_large_jpeg_keeps_its_sides(orientation, size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    field = Image.fromarray(smear(7, 64)).resize((4099, 4100), Image.NEAREST)
    decoded = decode_bytes(_encode(field, "JPEG", quality=50, exif=exif), None, max_side=DECODE_MAX_SIDE)
    assert (decoded.width, decoded.height) == size
    assert decoded.reduction < 1


def test_an_image_link_whose_target_is_missing_is_an_error_row_saying_so(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "share" / "b.png")
    found = find_images([tmp_path])
    assert [p.name for p in found] == ["a.png", "b.png"]
    with pytest.raises(ImageError, match=f"link target missing: {tmp_path / 'share' / 'b.png'}"):
        decode_file(found[1])


def test_links_whose_target_is_missing_are_not_called_no_files(tmp_path):
    (tmp_path / "notes.txt").symlink_to(tmp_path / "share" / "notes.txt")
    assert other_suffixes([tmp_path]) == {"with a missing link target": 1}
    with pytest.raises(PreflightError) as refusal:
        check_images_found([tmp_path])
    assert "found no files" not in str(refusal.value) and "1 with a missing link target" in str(refusal.value)


@pytest.mark.parametrize("side", [8000, 10000, 20000])  # over allscan's limit, Pillow's, twice Pillow's
def test_an_image_over_the_pixel_limit_is_refused_with_its_size_and_allscans_limit(side):
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    struct.pack_into(">II", data, 16, side, side)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ImageError, match=f"image too large: {side}x{side} pixels \\(limit {MAX_PIXELS:,}\\)"):
        decode_bytes(bytes(data), None)


@pytest.mark.parametrize("suffix, fmt", [(".jfif", "JPEG"), (".jpe", "JPEG"), (".webp", "WEBP")])
def test_jpegs_saved_as_jfif_or_jpe_and_webp_images_are_read(suffix, fmt, tmp_path):
    """A .jfif (what browsers on Windows save a JPEG as), .jpe or .webp file beside .jpg files was left out of
    the run without a word."""
    write_image(tmp_path / "a.jpg")
    Image.fromarray(smear(seed=3)).save(tmp_path / f"b{suffix}", fmt, quality=95)
    found = find_images([tmp_path])
    assert [p.name for p in found] == ["a.jpg", f"b{suffix}"]
    assert decode_file(found[1]).rgb.shape[2] == 3


def test_a_hidden_image_is_counted_as_hidden_not_as_allscans_own(tmp_path):
    """`allscan predict in/.hidden.jpg` said 'found only other files (1 .jpg written by allscan)'."""
    write_image(tmp_path / ".field.png")
    assert other_suffixes([tmp_path / ".field.png"]) == {"hidden .png": 1}  # named: a folder walk skips it
