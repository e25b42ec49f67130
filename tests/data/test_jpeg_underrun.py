"""Truncated JPEGs that PIL decodes without complaint (issue 15 item 6): a cut file closed with an end-of-image
marker, a header claiming far more pixels than its scan data holds. They must be errors everywhere an image enters
vlmad: the file loader, the service's upload decoder and the dataset loaders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vlmad.bench.loading import LoadFailure, TestSetCache, load_one
from vlmad.data import MVTecAD, load_image, load_mask
from vlmad_runtime.errors import ImageLoadError
from vlmad_runtime.serve.limits import ApiError, Limits, decode_image

EOI = b"\xff\xd9"


def _photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth noise (JPEG-friendly, no flat grey areas that could hide a grey under-run)."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _cut_with_eoi(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)] + EOI


def _big_header_small_data() -> bytes:
    """An 8x8 JPEG whose frame header is rewritten to claim 6000x6000."""
    data = bytearray(_jpeg(_photo(8, 8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (6000).to_bytes(2, "big") + (6000).to_bytes(2, "big")
    return bytes(data)


def _grey_fraction(data: bytes) -> float:
    """What PIL alone makes of the file: the share of pixels filled with the decoder's grey."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return float((np.asarray(im.convert("RGB")) == 128).all(axis=2).mean())


CASES = {
    "baseline-half": lambda: _cut_with_eoi(_jpeg(_photo()), 0.5),
    "baseline-99pct": lambda: _cut_with_eoi(_jpeg(_photo()), 0.99),
    "progressive-mid-scan": lambda: _cut_with_eoi(_jpeg(_photo(), progressive=True), 0.2),
    "grayscale-half": lambda: _cut_with_eoi(_jpeg(_photo()[..., 0]), 0.5),
    "header-6000x6000-data-8x8": _big_header_small_data,
    "no-eoi": lambda: _jpeg(_photo())[:-600],
}


@pytest.mark.parametrize("case", list(CASES))
def test_underrun_jpeg_is_an_image_load_error(tmp_path, case):
    data = CASES[case]()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "truncated" in info.value.reason and str(path) in str(info.value) and info.value.hint
    with pytest.raises(ImageLoadError):
        load_mask(path)


def test_the_refused_files_are_ones_pil_decodes_silently():
    """The reproduction of the issue: without the check these decode to grey and would be scored."""
    assert 0.3 < _grey_fraction(CASES["baseline-half"]()) < 0.7
    assert _grey_fraction(_big_header_small_data()) > 0.999


def test_underrun_refused_even_if_truncated_images_are_allowed_globally(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.jpg"
    path.write_bytes(CASES["baseline-half"]())
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"subsampling": 0}])
def test_complete_jpegs_still_load_exactly_as_pil_decodes_them(tmp_path, kw):
    arr = _photo(120, 80, seed=3)
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg(arr, **kw))
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


def test_cmyk_grayscale_and_trailing_garbage_jpegs_still_load(tmp_path):
    arr = _photo(64, 64, seed=4)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=92)
    assert load_image(tmp_path / "cmyk.jpg").size == (64, 64)
    Image.fromarray(arr[..., 1]).save(tmp_path / "gray.jpg", quality=92)
    assert load_image(tmp_path / "gray.jpg").mode == "RGB"
    # bytes after the end marker (some cameras append data) are not an under-run
    (tmp_path / "tail.jpg").write_bytes(_jpeg(arr) + b"\x00" * 100)
    assert load_image(tmp_path / "tail.jpg").size == (64, 64)


def test_progressive_jpeg_cut_at_a_scan_boundary_is_a_valid_coarser_image(tmp_path):
    """No scan is left unfinished, so nothing is grey: accepted (documented in _check_jpeg_complete)."""
    data = _jpeg(_photo(), progressive=True)
    second_scan = data.find(b"\xff\xda", data.find(b"\xff\xda") + 2)
    path = tmp_path / "coarse.jpg"
    path.write_bytes(data[:second_scan] + EOI)
    img = np.asarray(load_image(path))
    assert (img == 128).all(axis=2).mean() < 0.01


def test_service_upload_decoder_refuses_underrun_with_400():
    for case in ("baseline-half", "header-6000x6000-data-8x8"):
        with pytest.raises(ApiError) as info:
            decode_image(CASES[case](), Limits(), label="image")
        assert info.value.status == 400 and "truncated" in str(info.value.message)
    img, fmt = decode_image(_jpeg(_photo()), Limits())
    assert fmt == "JPEG" and img.size == (128, 96)


def _mvtec_with_cut_test_image(root: Path) -> Path:
    cat = root / "bottle"
    for sub in ("train/good", "test/good"):
        (cat / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_photo(seed=i)).save(cat / "train/good" / f"{i:03d}.png")
    Image.fromarray(_photo(seed=5)).save(cat / "test/good" / "000.png")
    cut = cat / "test/good" / "001.jpg"
    cut.write_bytes(CASES["baseline-half"]())
    return cut


def test_dataset_loader_reports_the_underrun_file_as_a_failure(tmp_path):
    cut = _mvtec_with_cut_test_image(tmp_path)
    samples = MVTecAD(tmp_path).samples("bottle", "test")
    bad = next(s for s in samples if s.image_path == cut)
    with pytest.raises(ImageLoadError):
        load_one(bad, None, None, want_mask=False)
    cache = TestSetCache(samples, None, None, want_masks=False)
    items = list(cache._stream())
    failures = [x for x in items if isinstance(x, LoadFailure)]
    assert len(items) == 2 and [f.sample.image_path for f in failures] == [cut]
    assert "truncated" in failures[0].reason


def test_mpo_two_frame_jpegs_load_their_first_frame_and_are_checked_too(tmp_path):
    """Phone/camera .jpg files with two pictures (MPO): the first frame is a JPEG stream like any other."""
    first, second = _photo(64, 80, seed=6), np.zeros((64, 80, 3), np.uint8)
    path = tmp_path / "phone.jpg"
    Image.fromarray(first).save(path, format="MPO", save_all=True, append_images=[Image.fromarray(second)])
    assert Image.open(path).format == "MPO"
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)
    data = path.read_bytes()
    end_of_first = data.find(EOI)
    path.write_bytes(data[: end_of_first // 2] + data[end_of_first:])  # first frame cut mid-scan
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)
