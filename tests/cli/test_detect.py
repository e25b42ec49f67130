"""`vlmad detect` as a user runs it: files in, scores/maps/overlays out, clear errors, parity with anomalib."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.testing import random_images

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)


def vlmad(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "vlmad", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def write_pngs(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    arr = (random_images(n, size, seed=seed).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def read_scores(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def preprocess_like_a_user(paths: list[Path]) -> np.ndarray:
    """Independent of vlmad: PNG -> [0,1] -> CLIP mean/std, NCHW (the images are already 240x240)."""
    arr = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths])
    return ((arr - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2).copy()


@pytest.mark.oracle
def test_detect_cli_matches_anomalib_on_png_files(tmp_path, weights_file, anomalib_winclip):
    arch = "vlmad-tiny-vit-240"
    weights = weights_file(arch)
    images = write_pngs(tmp_path / "imgs", 4, 240, seed=21)
    refs = write_pngs(tmp_path / "refs", 2, 240, seed=22)
    oracle = anomalib_winclip(
        tmp_path / "oracle",
        arch,
        weights,
        preprocess_like_a_user(images),
        "screw",
        refs=preprocess_like_a_user(refs),
        shots=(0, 2),
    )
    for k, extra in ((0, []), (2, ["--reference", refs[0], "--reference", refs[1]])):
        out = tmp_path / f"out{k}"
        res = vlmad(
            "detect",
            *images,
            "--class-name",
            "screw",
            "--model",
            arch,
            "--checkpoint",
            weights,
            "--out",
            out,
            "--save-maps",
            *extra,
        )
        assert res.returncode == 0, res.stderr
        rows = read_scores(out)
        assert [r["path"] for r in rows] == [str(p) for p in images]
        scores = np.array([float(r["score"]) for r in rows])
        maps = np.stack([np.load(out / r["map_file"]) for r in rows])
        assert maps.dtype == np.float32 and maps.shape == (4, 240, 240)
        assert oracle[f"maps_k{k}"].max() - oracle[f"maps_k{k}"].min() > 1e-2
        assert np.abs(scores - oracle[f"scores_k{k}"]).max() <= 1e-5
        assert np.abs(maps - oracle[f"maps_k{k}"]).max() <= 1e-5


def test_detect_outputs_overlays_and_survives_bad_files(tmp_path, weights_file):
    images = write_pngs(tmp_path / "imgs", 3, 90, seed=23)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jpeg = io.BytesIO()
    Image.open(images[0]).save(jpeg, "JPEG", quality=90)  # cut mid-scan, closed with an end marker: PIL's grey
    (tmp_path / "imgs" / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2] + b"\xff\xd9")
    gray = tmp_path / "imgs" / "gray.png"
    Image.fromarray((np.arange(120 * 80).reshape(120, 80) % 255).astype(np.uint8)).save(gray)
    out = tmp_path / "out"
    res = vlmad(
        "detect",
        tmp_path / "imgs",
        "-c",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--checkpoint",
        weights_file("vlmad-tiny-vit"),
        "--out",
        out,
        "--save-maps",
        "--overlay",
        "--batch-size",
        "2",
    )
    assert res.returncode == 0, res.stderr
    rows = {Path(r["path"]).name: r for r in read_scores(out)}
    assert set(rows) == {p.name for p in images} | {"broken.png", "gray.png", "cut.jpg"}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["score"]
    assert "truncated" in rows["cut.jpg"]["error"] and not rows["cut.jpg"]["score"]
    assert "skipped" in res.stderr and "broken.png" in res.stderr
    for name in ("img_0.png", "gray.png"):
        r = rows[name]
        assert 0.0 <= float(r["score"]) <= 1.0 and not r["error"]
        assert np.load(out / r["map_file"]).shape == (64, 64)
        panel = Image.open(out / r["overlay_file"])  # QC panel: original | heatmap + colour bar, caption below
        assert panel.height > 256 and panel.width > 2 * 256 * Image.open(tmp_path / "imgs" / name).width // 120
    assert (rows["gray.png"]["width"], rows["gray.png"]["height"]) == ("80", "120")
    stop = vlmad(
        "detect",
        tmp_path / "imgs",
        "-c",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--checkpoint",
        weights_file("vlmad-tiny-vit"),
        "--out",
        tmp_path / "out2",
        "--on-error",
        "stop",
    )
    assert stop.returncode == 2 and "broken.png" in stop.stderr and "Traceback" not in stop.stderr


def test_random_weights_are_stamped_everywhere(tmp_path):
    images = write_pngs(tmp_path / "imgs", 2, 64, seed=24)
    out = tmp_path / "out"
    res = vlmad(
        "detect",
        *images,
        "-c",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--out",
        out,
        "--save-maps",
        "--overlay",
    )
    assert res.returncode == 0, res.stderr
    assert "random weights - scores are meaningless" in res.stderr
    assert all(r["note"] == "random weights - scores are meaningless" for r in read_scores(out))
    assert json.loads((out / "run.json").read_text())["warning"] == "random weights - scores are meaningless"
    assert (out / "maps" / "RANDOM_WEIGHTS.txt").exists()
    overlay = np.asarray(Image.open(out / "overlays" / "img_0.png"))
    assert (overlay[:8] == 0).all(axis=-1).mean() > 0.5  # the dark stamp band at the top


def test_user_errors_are_messages_not_tracebacks(tmp_path, weights_file):
    images = write_pngs(tmp_path / "imgs", 1, 64, seed=25)
    (tmp_path / "notes.txt").write_text("hello\n")
    cases = [
        (["--checkpoint", tmp_path / "notes.txt"], "is a text file, not model weights"),
        (["--model", "ViT-Nope", "--random-weights"], "unknown model architecture"),
        (["--method", "nope", "--random-weights"], "unknown method"),
        (["--model", "vlmad-tiny-vit-4l", "--checkpoint", weights_file("vlmad-tiny-vit")], "does not fit"),
        ([], "--checkpoint"),  # default pretrained weights, offline
    ]
    for extra, expect in cases:
        res = vlmad("detect", *images, "-c", "bottle", "--out", tmp_path / "o", *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert expect in res.stderr and "Traceback" not in res.stderr, res.stderr
    missing = vlmad("detect", tmp_path / "nothing.png", "-c", "x", "--out", tmp_path / "o", "--random-weights")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_models_lists_methods_and_tiny_configs():
    res = vlmad("models")
    assert res.returncode == 0, res.stderr
    assert "winclip" in res.stdout and "ViT-B-16-plus-240" in res.stdout and "laion400m_e31" in res.stdout
    assert "vlmad-tiny-vit" not in res.stdout and "--all" in res.stdout  # the short list: methods + defaults
    every = vlmad("models", "--all")
    assert every.returncode == 0 and "vlmad-tiny-vit" in every.stdout and "ViT-L-14-336" in every.stdout
