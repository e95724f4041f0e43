"""Finding and decoding images: every kind of bad input becomes a clear error, odd modes are converted."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from allscan.images import MAX_FILE_BYTES, ImageError, decode_bytes, decode_file, find_images
from tests.utils import jpeg_bytes, smear, write_image


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_find_images_recursive_suffixes_and_exclusions(tmp_path):
    write_image(tmp_path / "a.JPG", fmt="JPEG")
    write_image(tmp_path / "sub" / "b.png")
    write_image(tmp_path / "sub" / "deeper" / "c.TIFF", fmt="TIFF")
    write_image(tmp_path / ".hidden.png")
    write_image(tmp_path / ".cache" / "d.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "results.xlsx.allscan.sqlite").write_bytes(b"")
    (tmp_path / "out.csv.run.json").write_text("{}")

    names = [p.name for p in find_images([tmp_path])]
    assert names == ["a.JPG", "b.png", "c.TIFF"]
    assert [p.name for p in find_images([tmp_path], recursive=False)] == ["a.JPG"]
    assert [p.name for p in find_images([tmp_path / "sub" / "b.png"])] == ["b.png"]


def test_find_images_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_images([tmp_path / "nope"])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not a recognised image"),
        (jpeg_bytes()[:300], "corrupt or truncated"),
        (jpeg_bytes()[:20] + b"\x00" * 500, "corrupt or truncated|not a recognised"),
    ],
    ids=["empty", "text", "truncated", "garbage-after-header"],
)
def test_bad_bytes_raise_clear_errors(data, reason, tmp_path):
    with pytest.raises(ImageError, match=reason):
        decode_bytes(data, tmp_path / "x.jpg")


def test_image_over_pixel_limit_is_refused_without_decoding(tmp_path):
    # A PNG header claiming 20000 x 20000 pixels: refused from the header alone.
    image = Image.new("L", (1, 1))
    data = bytearray(_encode(image, "PNG"))
    struct.pack_into(">II", data, 16, 20000, 20000)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ImageError, match="too large"):
        decode_bytes(bytes(data), tmp_path / "huge.png")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_odd_modes_become_rgb(mode):
    rgb = Image.fromarray(smear(1))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        fmt = "PNG"
    else:
        image = rgb.convert(mode)
        fmt = "TIFF" if mode == "CMYK" else "PNG"
    decoded = decode_bytes(_encode(image, fmt), None)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (64, 64, 3)
    if mode == "I;16":
        # 16-bit values are rescaled, not clipped to white.
        assert 100 < decoded.rgb.mean() < 250


def test_rgba_transparency_goes_on_white():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    decoded = decode_bytes(_encode(image, "PNG"), None)
    assert (decoded.rgb == 255).all()


def test_exif_orientation_is_applied():
    image = Image.fromarray(smear(2, size=96)[:, :70])  # 70 wide, 96 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    decoded = decode_bytes(_encode(image, "JPEG", exif=exif), None)
    assert (decoded.width, decoded.height) == (96, 70)


def test_unreadable_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        decode_file(tmp_path / "missing.png")


def test_a_multi_page_file_scores_its_first_page_and_its_row_says_so(tmp_path, models_dir):
    import allscan

    first, second = Image.fromarray(smear(1)), Image.fromarray(smear(2))
    first.save(tmp_path / "stack.tiff", save_all=True, append_images=[second, second])
    first.save(tmp_path / "single.tiff")
    decoded = decode_file(tmp_path / "stack.tiff")
    assert decoded.pages == 3 and np.array_equal(decoded.rgb, smear(1))
    frame = allscan.predict([tmp_path / "stack.tiff", tmp_path / "single.tiff"], models=models_dir).set_index("file")
    assert frame.loc["stack.tiff", "notes"].endswith("only the first of its 3 pages was scored")
    assert "pages" not in frame.loc["single.tiff", "notes"]
    assert frame.loc["stack.tiff", "p_all"] == frame.loc["single.tiff", "p_all"]


def test_a_file_over_a_gibibyte_is_an_error_row_without_being_read(tmp_path, models_dir):
    import allscan

    scan = tmp_path / "whole-slide.tif"
    with open(scan, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    write_image(tmp_path / "field.png")
    frame = allscan.predict([tmp_path], models=models_dir).set_index("file")
    assert frame.loc["whole-slide.tif", "verdict"] == "error"
    assert frame.loc["whole-slide.tif", "error"].startswith("file too large: 1.0 GiB (limit 1 GiB)")
    assert frame.loc["field.png", "verdict"] != "error"
