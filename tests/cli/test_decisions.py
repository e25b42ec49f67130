"""Safe decisions (calibrate -> detect): a deploy file refuses every detector it was not calibrated on, names each
differing field; --force-deploy labels rows; NaN weights never give "normal"; overlays share one fixed scale."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vlmad.cli.commands  # noqa: F401  (registers every command)
from vlmad.cli import app
from vlmad_runtime.deploy import NOT_CALIBRATED_NOTE, DeployMismatchError, load_deploy
from vlmad_runtime.errors import VlmadError

MODEL = "vlmad-tiny-vit"


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def rows_of(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def detect_args(images, out, deploy, **opts) -> list:
    """`vlmad detect` with the calibrated detector's options, overridden by ``opts`` (option -> value, None
    drops the option; list values repeat it)."""
    base = {"-c": "demo_object", "--model": MODEL, "--checkpoint": opts.pop("weights")}
    base.update(opts)
    args = ["detect", *images, "--out", out, "--deploy", deploy]
    for key, value in base.items():
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                args.append(key)
            elif v is not None:
                args += [key, v]
    return args


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, mvtec_root, weights_file):
    """A zero-shot and a 1-shot deploy file of the tiny checkpoint detector (class demo_object)."""
    tmp = tmp_path_factory.mktemp("deploys")
    good = mvtec_root / "demo_object" / "train" / "good"
    weights = weights_file(MODEL)
    out = {"weights": weights, "good": good, "ref": good / "000.png", "tmp": tmp}
    for name, extra in (("zero", []), ("one", ["--reference", good / "000.png"])):
        res = invoke(
            "calibrate",
            "-c",
            "demo_object",
            "--normal-dir",
            good,
            "--model",
            MODEL,
            "--checkpoint",
            weights,
            "--pixel-fp-rate",
            "0.01",
            "--out",
            tmp / f"{name}.json",
            *extra,
        )
        assert res.exit_code == 0, res.output + repr(res.exception)
        out[name] = tmp / f"{name}.json"
    return out


def test_calibrate_records_fingerprint_pixel_scale_and_remaining_normals(calibrated):
    dep = load_deploy(calibrated["one"])
    fp = dep.fingerprint
    assert fp["shots"] == 1 and fp["class_name"] == "demo_object" and fp["model"] == MODEL
    assert fp["reference_fingerprint"] and fp["precision"] == "fp32" and fp["prompt_hash"] and fp["image_size"]
    assert fp["scales"] and fp["vlmad_version"] and fp["weights_id"]
    assert dep.record["calibration"]["n_images"] == 3 and dep.record["calibration"]["excluded_references"] == 1
    assert dep.pixel is not None and dep.pixel.map_scale[0] < dep.pixel.pixel_threshold <= dep.pixel.map_scale[1]
    assert load_deploy(calibrated["zero"]).fingerprint["reference_fingerprint"] is None


PROMPT_FILE = "name: winclip\nnormal_states: ['{}']\nanomalous_states: ['broken {}']\ntemplates: ['a photo of {}.']\n"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--reference": "REF"}, {"shots", "reference_fingerprint", "method"}),
        ({"-c": "demo_texture"}, {"class_name"}),
        ({"--model": "vlmad-tiny-vit-240", "--checkpoint": None, "--random-weights": True}, {"model", "weights_id"}),
        ({"--checkpoint": None, "--random-weights": True}, {"weights_id"}),
        ({"--prompt-set": "aprilgan"}, {"prompt_set", "prompt_hash"}),
        ({"--prompt-set": "PROMPT_FILE"}, {"prompt_hash"}),
        ({"--precision": "int8"}, {"precision"}),
    ],
)
def test_zero_shot_deploy_refuses_another_detector(calibrated, mvtec_root, tmp_path, change, expected):
    change = dict(change)
    if change.get("--reference") == "REF":
        change["--reference"] = calibrated["ref"]
    if change.get("--prompt-set") == "PROMPT_FILE":
        (tmp_path / "edited.yaml").write_text(PROMPT_FILE)
        change["--prompt-set"] = tmp_path / "edited.yaml"
    images = [mvtec_root / "demo_object" / "test" / "good"]
    res = invoke(*detect_args(images, tmp_path / "r", calibrated["zero"], weights=calibrated["weights"], **change))
    assert res.exit_code != 0 and isinstance(res.exception, DeployMismatchError), res.output
    named = {d[0] for d in res.exception.differences}
    assert expected <= named and not named & {"class_name"} - expected, named
    for field in expected:
        assert field in res.exception.message
    assert "vlmad calibrate" in res.exception.hint and not (tmp_path / "r" / "scores.csv").exists()


def test_reference_set_must_match_by_content_in_any_order(calibrated, mvtec_root, tmp_path):
    good, images = calibrated["good"], [mvtec_root / "demo_object" / "test" / "good"]
    copy = tmp_path / "renamed.png"
    shutil.copy(calibrated["ref"], copy)  # same image, another name: same detector
    res = invoke(
        *detect_args(images, tmp_path / "ok", calibrated["one"], weights=calibrated["weights"], **{"--reference": copy})
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = invoke(
        *detect_args(
            images,
            tmp_path / "other",
            calibrated["one"],
            weights=calibrated["weights"],
            **{"--reference": good / "001.png"},
        )
    )
    assert isinstance(res.exception, DeployMismatchError)
    assert [d[0] for d in res.exception.differences] == ["reference_fingerprint"]


def test_force_deploy_labels_every_row(calibrated, mvtec_root, tmp_path):
    """The reproduction of issue 10: a zero-shot threshold on an 8-shot-like detector (here 3-shot)."""
    images = [mvtec_root / "demo_object" / "test"]
    refs = [calibrated["good"] / f"00{i}.png" for i in (1, 2, 3)]
    out = tmp_path / "forced"
    res = invoke(
        *detect_args(
            [d for d in sorted(images[0].iterdir())],
            out,
            calibrated["zero"],
            weights=calibrated["weights"],
            **{"--reference": refs, "--force-deploy": True},
        )
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = rows_of(out)
    assert len(rows) == 6 and all(NOT_CALIBRATED_NOTE in r["note"] and r["decision"] for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["threshold_calibrated_for_this_detector"] is False


def test_nan_weights_give_non_finite_score_errors_and_exit_non_zero(calibrated, mvtec_root, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(calibrated["weights"]))
    save_file({k: v * float("nan") if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "nan.st")
    nan_weights = tmp_path / "nan.safetensors"
    (tmp_path / "nan.st").rename(nan_weights)
    images = sorted((mvtec_root / "demo_object" / "test" / "good").iterdir())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "nan"
    res = invoke(
        *detect_args(
            [*images, tmp_path / "broken.png"], out, calibrated["zero"], weights=nan_weights, **{"--force-deploy": True}
        )
    )
    assert res.exit_code != 0 and isinstance(res.exception, VlmadError)
    assert "non-finite" in res.exception.message
    rows = rows_of(out)
    assert len(rows) == len(images) + 1  # every row written, the unreadable one too
    nan_rows = [r for r in rows if r["error"] == "non_finite_score"]
    assert len(nan_rows) == len(images) and all(r["decision"] == "" and r["score"] == "" for r in nan_rows)
    assert not any(r["decision"] == "normal" for r in rows)


def test_good_overlay_cooler_than_defective_and_masks(calibrated, mvtec_root, tmp_path):
    test = mvtec_root / "demo_object" / "test"
    out = tmp_path / "qc"
    res = invoke(
        *detect_args(
            sorted(test.iterdir()),
            out,
            calibrated["one"],
            weights=calibrated["weights"],
            **{"--reference": calibrated["ref"], "--overlay": True, "--save-masks": True, "--save-maps": True},
        )
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    dep = load_deploy(calibrated["one"])
    rows = rows_of(out)
    good = [r for r in rows if "/good/" in r["path"]]
    bad = [r for r in rows if "/good/" not in r["path"]]
    hot_good = [float(r["defect_area"]) for r in good]
    hot_bad = [float(r["defect_area"]) for r in bad]
    assert np.mean(hot_bad) > 2 * np.mean(hot_good) + 0.005, (hot_good, hot_bad)
    for r in rows:  # the mask is the map above the calibrated pixel threshold, area = its share of pixels
        mask = np.asarray(Image.open(out / r["mask_file"])) > 0
        assert mask.shape == (int(r["height"]), int(r["width"]))
        assert mask.mean() == pytest.approx(float(r["defect_area"]))
        amap = np.load(out / r["map_file"])
        assert (amap >= dep.pixel.pixel_threshold).mean() == pytest.approx(mask.mean(), abs=0.05)
    run = json.loads((out / "run.json").read_text())
    assert run["heatmap_scale"]["lo"] == dep.pixel.map_scale[0] and "calibrated" in run["heatmap_scale"]["source"]


def colour_bar_crop(path: Path) -> np.ndarray:
    """The colour bar of a QC panel: the columns just left of the (right-most) mask-free heatmap panel end."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    row = arr[:256]
    cols = np.where((row != 255).any(axis=(0, 2)))[0]
    return row[:, cols.max() - 50 : cols.max() + 1]


def test_two_overlays_of_one_run_share_one_scale(mvtec_root, weights_file, tmp_path):
    good = mvtec_root / "demo_object" / "test" / "good"
    bad = sorted(p for d in (mvtec_root / "demo_object" / "test").iterdir() if d.name != "good" for p in d.iterdir())
    out = tmp_path / "run"
    res = invoke(
        "detect",
        sorted(good.iterdir())[0],
        bad[0],
        "-c",
        "demo_object",
        "--model",
        MODEL,
        "--checkpoint",
        weights_file(MODEL),
        "--overlay",
        "--save-maps",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = json.loads((out / "run.json").read_text())
    scale = run["heatmap_scale"]
    assert "per run" in scale["source"] and "not calibrated" in scale["source"]
    rows = rows_of(out)
    maps = [np.load(out / r["map_file"]) for r in rows]
    assert scale["hi"] == pytest.approx(max(float(m.max()) for m in maps))
    assert maps[0].max() != pytest.approx(maps[1].max())  # per-image min-max would give two different bars
    bars = [colour_bar_crop(out / r["overlay_file"]) for r in rows]
    assert bars[0].shape == bars[1].shape and np.array_equal(bars[0], bars[1])


def test_ray_executor_checks_the_deploy_file_like_local_detect(calibrated, mvtec_root, tmp_path):
    """The fingerprint check runs before any Ray work: a mismatch is refused, a forced one too (rows could not
    be labelled there)."""
    images = [mvtec_root / "demo_object" / "test" / "good"]
    for extra in ({}, {"--force-deploy": True}):
        res = invoke(
            *detect_args(
                images,
                tmp_path / "ray",
                calibrated["zero"],
                weights=calibrated["weights"],
                **{"-c": "demo_texture", "--executor": "ray", **extra},
            )
        )
        assert res.exit_code != 0 and isinstance(res.exception, VlmadError), res.output
        assert "class_name" in res.exception.message or "--force-deploy" in res.exception.message
        assert not (tmp_path / "ray" / "scores.csv").exists()
