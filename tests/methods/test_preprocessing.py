"""File-to-tensor fidelity: each method's preprocessing of image files equals its reference pipeline.

APRIL-GAN against the reference's own transform (open_clip's eval transform as VAND-APRIL-GAN builds it, with
torchvision on the PIL image); WinCLIP against anomalib 2.7.0 run in its oracle environment. Non-square and
MVTec-sized images with hard edges, where the pipelines differ most (bicubic overshoot, PIL's uint8 rounding).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmad.backbones import ClipBackbone
from vlmad.bench.loading import make_preprocess
from vlmad.methods.aprilgan import AprilGan
from vlmad.methods.inputs import PIL_BICUBIC, TENSOR_BICUBIC, to_model_input
from vlmad.methods.winclip import WinClip

SIZES = [(640, 480), (1024, 1024), (333, 517)]
ORACLE = Path(__file__).parents[1] / "oracle" / "anomalib_preprocess.py"


def write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    """Hard-edged blocks plus noise: bicubic overshoots at every edge, so a missing clamp or a float-vs-uint8
    resize shows."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(h // 9 + 1, w // 9 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 9, axis=0), 9, axis=1)[:h, :w]
    img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("preprocess")
    files = [write_image(root / f"img_{w}x{h}.png", (w, h), seed=i) for i, (w, h) in enumerate(SIZES)]
    files.append(write_image(root / "gray_640x480.png", (640, 480), seed=9, mode="L"))
    return files


def reference_aprilgan(path: Path, size: int, mean, std) -> torch.Tensor:
    """VAND-APRIL-GAN's test-time transform, written with torchvision as the reference does (its open_clip's
    ``image_transform``: Resize((S, S), BICUBIC), CenterCrop, RGB, ToTensor, Normalize) on ``Image.open``."""
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop((size, size)),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )
    with Image.open(path) as im:
        return transform(im).unsqueeze(0)


@pytest.mark.parametrize("size", [518, 240])
def test_aprilgan_pipeline_equals_the_reference_transform(image_files, tiny_backbone, size):
    bb = tiny_backbone
    for path in image_files:
        ours = to_model_input([path], bb, size=size, preprocessing=AprilGan.preprocessing)
        ref = reference_aprilgan(path, size, bb.mean, bb.std)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6, msg=f"{path.name} at {size}")
        # the other pipeline is measurably different here, so this comparison can fail
        other = to_model_input([path], bb, size=size, preprocessing=TENSOR_BICUBIC)
        assert float((other - ref).abs().max()) > 0.02, path.name


def test_every_entry_point_uses_the_declared_pipeline(image_files, tiny_backbone):
    """predict/fit (via preprocess), the benchmark loader and APRIL-GAN training all use the method's own."""
    from vlmad.training.aprilgan import ImageSource

    det = AprilGan(tiny_backbone, allow_untrained=True)
    path = image_files[0]
    ref = reference_aprilgan(path, tiny_backbone.image_size, tiny_backbone.mean, tiny_backbone.std)
    torch.testing.assert_close(det.preprocess([path]), ref, rtol=0, atol=1e-6)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    torch.testing.assert_close(make_preprocess(det)(rgb), ref[0], rtol=0, atol=1e-6)
    x, _ = ImageSource(tiny_backbone, seed=0).tensors(rgb, np.zeros((rgb.height, rgb.width), dtype=bool))
    torch.testing.assert_close(x, ref[0], rtol=0, atol=1e-6)
    assert det.info().extra["preprocessing"] == PIL_BICUBIC.name == "pil-bicubic"
    win = WinClip(tiny_backbone)
    assert win.info().extra["preprocessing"] == TENSOR_BICUBIC.name
    assert win.preprocessing is TENSOR_BICUBIC and AprilGan.preprocessing is PIL_BICUBIC


@pytest.mark.oracle
def test_winclip_pipeline_equals_anomalib(image_files, oracle_python, weights_file, tmp_path):
    """anomalib 2.7.0 (oracle env): read_image (float /255) + WinClip's pre-processor (bicubic, antialias,
    no clamp) on the same files; vlmad's WinCLIP input must agree to float rounding."""
    arch = "vlmad-tiny-vit-240"
    bb = ClipBackbone.load(arch, checkpoint=str(weights_file(arch)))
    assert bb.image_size == 240  # anomalib's WinCLIP resizes to 240 whatever the model
    out = tmp_path / "anomalib.npz"
    proc = subprocess.run(
        [oracle_python, str(ORACLE), str(out), *map(str, image_files)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    det = WinClip(bb)
    with np.load(out) as ref:
        for i, path in enumerate(image_files):
            ours = det.preprocess([path]).numpy()
            np.testing.assert_allclose(ours, ref[f"image_{i}"], rtol=0, atol=1e-5, err_msg=path.name)
            assert (
                np.abs(ref[f"image_{i}"] - to_model_input([path], bb, preprocessing=PIL_BICUBIC).numpy()).max() > 0.02
            )
