"""`vlmad calibrate` -> deploy.json -> `vlmad detect --deploy` decisions."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

import vlmad.cli.study_cmd  # noqa: F401  (registers the commands until vlmad.cli.commands imports the module)
from vlmad.cli import app
from vlmad.study import load_deploy
from vlmad_runtime.errors import VlmadError

TINY = ["--model", "vlmad-tiny-vit", "--random-weights"]


def test_normal_dir_quantile_then_detect_with_deploy(tmp_path, mvtec_root):
    good = mvtec_root / "demo_object" / "train" / "good"
    ref = good / "000.png"
    out = tmp_path / "deploy.json"
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--class-name",
            "demo_object",
            "--normal-dir",
            str(good),
            "--reference",
            str(ref),
            "--quantile",
            "0.5",
            "--out",
            str(out),
            *TINY,
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    dep = load_deploy(out)
    cal = dep.record["calibration"]
    assert cal["mode"] == "normal-quantile" and cal["n_images"] == 3 and cal["excluded_references"] == 1
    assert cal["references"] == [str(ref.resolve())] and dep.record["detector"]["shots"] == 1
    assert dep.record["method"] == "winclip" and dep.record["class_name"] == "demo_object"
    assert cal["warning"] == "random weights - scores are meaningless"

    det_out = tmp_path / "det"
    res = CliRunner().invoke(
        app,
        [
            "detect",
            str(mvtec_root / "demo_object" / "test" / "good"),
            "--class-name",
            "demo_object",
            "--reference",
            str(ref),
            "--out",
            str(det_out),
            "--deploy",
            str(out),
            *TINY,
        ],
    )
    assert res.exit_code == 0, res.output
    with open(det_out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["decision"] == dep.decide(float(r["score"])) for r in rows)


def test_labelled_split_f1_optimal_with_drawn_references(tmp_path, mvtec_root):
    out = tmp_path / "d.json"
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--dataset",
            "mvtec",
            "--root",
            str(mvtec_root),
            "--category",
            "demo_texture",
            "--shots",
            "1",
            "--seed",
            "1",
            "--out",
            str(out),
            *TINY,
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads(out.read_text())
    cal = data["calibration"]
    assert cal["mode"] == "f1-optimal" and cal["n_images"] == 6 and cal["split"] == "test"
    assert cal["n_normal"] == 3 and cal["n_anomalous"] == 3 and len(cal["references"]) == 1
    assert "train/good" in cal["references"][0] and data["class_name"] == "demo_texture"
    assert 0.0 <= data["expected_false_alarm_rate"] <= 1.0

    quant = tmp_path / "q.json"
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--dataset",
            "mvtec",
            "--root",
            str(mvtec_root),
            "--category",
            "demo_texture",
            "--mode",
            "normal-quantile",
            "--shots",
            "1",
            "--out",
            str(quant),
            *TINY,
        ],
    )
    assert res.exit_code == 0, res.output
    qc = json.loads(quant.read_text())["calibration"]
    assert qc["split"] == "train" and qc["n_images"] == 3  # 4 train images minus the reference


def test_calibrate_needs_one_source(tmp_path, mvtec_root):
    res = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path / "x.json"), *TINY])
    assert isinstance(res.exception, VlmadError) and "--normal-dir" in res.exception.message
    res = CliRunner().invoke(
        app,
        ["calibrate", "--normal-dir", str(mvtec_root), "--dataset", "mvtec", "--out", str(tmp_path / "x.json"), *TINY],
    )
    assert isinstance(res.exception, VlmadError)
