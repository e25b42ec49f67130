"""`vlmad detect --executor ray` on a real local Ray cluster: a list file gives local detect's outputs (scores.csv
byte for byte, maps, bad images as errors), and a rerun after a crash resumes from the rows on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.testing import random_images
from vlmad_runtime.errors import VlmadError

TINY = {"method": "winclip", "model": "vlmad-tiny-vit", "random_weights": True, "batch_size": 2}


@pytest.fixture
def images(tmp_path) -> list[Path]:
    """Five PNGs in two folders (repeated stems: map names need the parent), one corrupt file in the middle."""
    arr = (random_images(5, 64, seed=3).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        folder = tmp_path / "imgs" / f"s{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"img_{i // 2}.png")
        Image.fromarray(a).save(paths[-1])
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not a png")
    paths.insert(2, bad)
    return paths


def test_detect_over_a_list_file_equals_local_detect(ray_cluster, images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# inspection batch\n" + "\n".join(map(str, images)) + "\n\n")
    common = [
        "--class-name",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--batch-size",
        "2",
        "--save-maps",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "vlmad", "detect"]
    local = subprocess.run(
        [*run, *map(str, images), "--out", str(tmp_path / "local"), *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr[-2000:]
    ray = subprocess.run(
        [
            *run,
            str(listing),
            "--out",
            str(tmp_path / "ray"),
            *common,
            "--executor",
            "ray",
            "--ray-address",
            ray_cluster,
            "--workers",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ray.returncode == 0, ray.stderr[-2000:]
    expected = (tmp_path / "local" / "scores.csv").read_text()
    assert (tmp_path / "ray" / "scores.csv").read_text() == expected
    assert "not a recognisable image" in expected.splitlines()[3]
    maps = sorted(p.name for p in (tmp_path / "local" / "maps").glob("*.npy"))
    assert len(maps) == 5 and maps == sorted(p.name for p in (tmp_path / "ray" / "maps").glob("*.npy"))
    for name in maps:
        assert np.array_equal(np.load(tmp_path / "local" / "maps" / name), np.load(tmp_path / "ray" / "maps" / name))


def test_rerun_after_a_crash_resumes_and_other_inputs_are_refused(ray_cluster, images, tmp_path):
    from vlmad.distributed import detect_on_ray, detector_builder

    build = detector_builder(**TINY)
    out = tmp_path / "out"
    glob_input = str(tmp_path / "imgs" / "s*" / "*.png")
    first = detect_on_ray(build, [glob_input], "bottle", out, batch_size=2)
    full = (out / "scores.csv").read_bytes()
    assert first == {"total": 5, "skipped": 0, "scored": 5, "errors": 0, "non_finite": 0}
    # a crash after two rows, in the middle of writing the third
    lines = full.split(b"\n")
    (out / "scores.csv").write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:10])
    again = detect_on_ray(build, [glob_input], "bottle", out, batch_size=2)
    assert again == {"total": 5, "skipped": 2, "scored": 3, "errors": 0, "non_finite": 0}
    assert (out / "scores.csv").read_bytes() == full
    # everything done: nothing is computed (no Ray pipeline), nothing is written
    assert detect_on_ray(build, [glob_input], "bottle", out, batch_size=2)["skipped"] == 5
    assert (out / "scores.csv").read_bytes() == full
    with pytest.raises(VlmadError, match="other inputs"):
        detect_on_ray(build, [str(images[-1])], "bottle", out, batch_size=2)


def test_overlays_without_a_calibrated_scale_are_refused_before_ray_starts(images, tmp_path):
    """Ray workers draw each overlay alone: only a deploy file's calibrated map scale keeps heatmaps comparable
    (never a per-image scale), so --overlay without one is refused up front."""
    from vlmad.distributed import detect_on_ray, detector_builder

    with pytest.raises(VlmadError, match="--deploy"):
        detect_on_ray(detector_builder(**TINY), [str(images[0])], "bottle", tmp_path / "out", overlay=True)
