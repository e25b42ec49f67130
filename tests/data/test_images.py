"""load_image / load_mask / image_size / check_sample on the odd files real datasets contain."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vlmad.data import Sample, check_sample, image_size, load_image, load_mask
from vlmad_runtime.errors import DatasetLayoutError, ImageLoadError


def _noise(h: int = 64, w: int = 64, c: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A tiny file whose header claims a huge 8-bit grayscale image (a decompression-bomb stand-in)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


# --- modes ---


def test_rgb_png_roundtrip_is_exact(tmp_path):
    arr = _noise()
    Image.fromarray(arr).save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB" and im.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(im), arr)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _noise(c=1)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = np.asarray(load_image(tmp_path / "g.png"))
    assert out.shape == (64, 64, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], gray)


def test_bilevel_mode_1(tmp_path):
    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "b.png")
    out = np.asarray(load_image(tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 0], np.eye(8, dtype=np.uint8) * 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_black(tmp_path, mode):
    color = np.full((2, 3, 3), 200, np.uint8)
    alpha = np.array([[0, 128, 255], [255, 0, 64]], np.uint8)
    if mode == "RGBA":
        Image.fromarray(np.dstack([color, alpha]), "RGBA").save(tmp_path / "a.png")
    else:
        Image.fromarray(np.dstack([color[..., 0], alpha]), "LA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    expected = np.round(200 * alpha.astype(float) / 255).astype(np.uint8)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], expected)


def test_palette_png_without_and_with_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 250] + [0] * (256 * 3 - 9))
    pal.save(tmp_path / "p.png")
    out = np.asarray(load_image(tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 250])

    pal.save(tmp_path / "pt.png", transparency=1)  # index 1 fully transparent -> black
    out = np.asarray(load_image(tmp_path / "pt.png"))
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000], [30000, 65280, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "d.png"))[..., 0]
    np.testing.assert_array_equal(out, [[0, 1, 4], [117, 254, 255]])  # round(v * 255 / 65535)


def test_16bit_tiff_and_32bit_int_and_float(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "a.tif"))[..., 0], [[0, 255]])
    # 32-bit ints outside the 16-bit range: min-max scaled instead of wrapped/clipped
    Image.fromarray(np.array([[-100, 0, 300]], np.int32)).save(tmp_path / "i.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "i.tif"))[..., 0], [[0, 64, 255]])
    # float data in 0..1
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "f.tif"))[..., 0], [[0, 128, 255]])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "c.jpg")  # pure cyan
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB"
    r, g, b = np.asarray(im)[8, 8].astype(int)
    assert r < 20 and g > 235 and b > 235


def test_exif_rotated_jpeg_is_shown_upright(tmp_path):
    arr = np.zeros((32, 64, 3), np.uint8)  # stored 64 wide x 32 high: left half red, right half blue
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    im = load_image(tmp_path / "r.jpg")
    assert im.size == (32, 64)
    assert image_size(tmp_path / "r.jpg") == (32, 64)
    out = np.asarray(im).astype(int)
    assert out[8, 16, 0] > 200 and out[8, 16, 2] < 60  # top (was left): red
    assert out[56, 16, 2] > 200 and out[56, 16, 0] < 60  # bottom (was right): blue


def test_bmp_and_uppercase_extension(tmp_path):
    arr = _noise(16, 24)
    Image.fromarray(arr).save(tmp_path / "x.BMP", format="BMP")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "x.BMP")), arr)


# --- broken files ---


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises(tmp_path, ext):
    path = tmp_path / f"t.{ext}"
    Image.fromarray(_noise(128, 128)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "truncated" in info.value.reason
    assert info.value.hint
    # the header is intact, so the cheap size read still works
    assert image_size(path) == (128, 128)


def test_truncation_detected_even_if_global_flag_is_set(tmp_path, monkeypatch):
    path = tmp_path / "t.png"
    Image.fromarray(_noise(128, 128)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageLoadError):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_truncation_flag_untouched_on_success(tmp_path):
    Image.fromarray(_noise()).save(tmp_path / "a.png")
    load_image(tmp_path / "a.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupted_png_data_raises(tmp_path):
    path = tmp_path / "c.png"
    Image.fromarray(_noise(128, 128)).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_with_image_extension_raises(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "not a recognisable image" in info.value.reason
    with pytest.raises(ImageLoadError):
        load_mask(path)
    with pytest.raises(ImageLoadError):
        image_size(path)


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_pixel_limit_parameter(tmp_path):
    Image.fromarray(_noise()).save(tmp_path / "a.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 1000"):
        load_image(tmp_path / "a.png", max_pixels=1000)
    with pytest.raises(ImageLoadError):
        load_mask(tmp_path / "a.png", max_pixels=1000)
    assert load_image(tmp_path / "a.png", max_pixels=64 * 64).size == (64, 64)
    assert load_image(tmp_path / "a.png", max_pixels=None).size == (64, 64)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    # 12000 x 10000 = 120 Mpx: above vlmad's default 100 Mpx, below PIL's hard limit
    path = _png_header_only(tmp_path / "bomb.png", 12000, 10000)
    assert path.stat().st_size < 200
    with pytest.raises(ImageLoadError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)
    # far beyond PIL's own hard limit: PIL's error is translated too
    huge = _png_header_only(tmp_path / "huge.png", 30000, 30000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(huge, max_pixels=None)


# --- masks ---


def test_mask_binarises_nonzero_for_mvtec_and_visa_values(tmp_path):
    mvtec = np.array([[0, 255], [255, 0]], np.uint8)
    visa = np.array([[0, 1], [2, 0]], np.uint8)
    Image.fromarray(mvtec).save(tmp_path / "m.png")
    Image.fromarray(visa).save(tmp_path / "v.png")
    for name in ("m.png", "v.png"):
        mask = load_mask(tmp_path / name)
        assert mask.dtype == bool and mask.shape == (2, 2)
        np.testing.assert_array_equal(mask, [[False, True], [True, False]])


def test_mask_rgb_any_channel_and_palette_and_16bit(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1, 1] = 7  # green only
    rgb[1, 2, 2] = 255  # blue only
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = [[False, True, False], [False, False, True]]
    np.testing.assert_array_equal(load_mask(tmp_path / "rgb.png"), expected)

    pal = Image.fromarray(np.array([[0, 1, 0], [0, 0, 2]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), expected)

    Image.fromarray(np.array([[0, 300, 0], [0, 0, 1]], np.uint16)).save(tmp_path / "d.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "d.png"), expected)


def test_mask_resize_is_nearest_and_stays_binary(tmp_path):
    small = np.array([[0, 255], [3, 0]], np.uint8)
    Image.fromarray(small).save(tmp_path / "m.png")
    big = load_mask(tmp_path / "m.png", size=(4, 6))  # (w, h)
    assert big.shape == (6, 4) and big.dtype == bool
    expected = np.kron(np.array([[0, 1], [1, 0]]), np.ones((3, 2))).astype(bool)
    np.testing.assert_array_equal(big, expected)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", size=(2, 2)), small != 0)


def test_image_size_reads_header(tmp_path):
    Image.fromarray(_noise(20, 30)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (30, 20)


def test_check_sample_detects_mask_size_mismatch(tmp_path):
    Image.fromarray(_noise(32, 32)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ok_mask.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "bad_mask.png")
    ok = Sample(tmp_path / "img.png", "anomalous", "c", "test", "x", tmp_path / "ok_mask.png")
    check_sample(ok)
    check_sample(Sample(tmp_path / "img.png", "normal", "c", "test"))
    bad = Sample(tmp_path / "img.png", "anomalous", "c", "test", "x", tmp_path / "bad_mask.png")
    with pytest.raises(DatasetLayoutError) as info:
        check_sample(bad)
    assert str(tmp_path / "bad_mask.png") in str(info.value) and info.value.hint
