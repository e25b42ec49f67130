"""The backbone axis end to end, and an ablation variant that cannot be built: logged, reported, the study goes on."""

from __future__ import annotations

import json

from vlmad.bench import load_results
from vlmad.study import StudyOptions, load_study_spec, run_study

SPEC = """
name: backbones
datasets: [{kind: mvtec, categories: [demo_object]}]
methods: [winclip]
shots: [0]
ablations:
  backbone:
    values:
      - default
      - {model: vlmad-tiny-vit-4l, name: deeper}
      - {model: vlmad-tiny-vit-4l, checkpoint: missing.safetensors, name: broken}
calibration: {mode: f1-optimal-test}
report: {gallery: false}
"""


def test_backbone_variants_and_a_broken_one(tmp_path, mvtec_root):
    spec_file = tmp_path / "b.yaml"
    spec_file.write_text(SPEC)
    messages: list[str] = []
    out = run_study(
        load_study_spec(spec_file),
        StudyOptions(
            out=tmp_path / "run",
            roots={"mvtec": mvtec_root},
            model=["vlmad-tiny-vit"],
            random_weights=True,
            flops=False,
        ),
        log=messages.append,
    )
    rows = load_results(out)
    variants = {(r["tags"] or {}).get("variant"): r for r in rows}
    assert set(variants) == {None, "deeper"}
    assert variants["deeper"]["detector"]["model"] == "vlmad-tiny-vit-4l"
    assert variants["deeper"]["method_spec"]["study"]["base_label"] == "winclip"
    assert any("backbone=broken failed" in m for m in messages)
    study = json.loads((out / "study.json").read_text())
    (failed,) = study["invocations"][-1]["failed_phases"]
    assert failed["phase"] == "backbone=broken" and "missing.safetensors" in failed["error"]
    html = (out / "report.html").read_text()
    assert "backbone=broken" in html and 'data-figure="ablation-backbone"' in html
    # calibration from the test scores (mode f1-optimal-test): one deploy file, labelled optimistic
    (dep,) = (out / "deploy").glob("*/*/*.json")
    cal = json.loads(dep.read_text())["calibration"]
    assert cal["mode"] == "f1-optimal" and "optimistic" in cal["source"]
