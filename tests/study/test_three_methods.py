"""`vlmad study` with the three methods (tiny random model, generated MVTec-layout data): AnomalyCLIP, a
zero-shot-only method (its spec says so), gets zero-shot rows only (no failing few-shot rows), and the report's
method comparison, shot curves, recommendations and cross-domain matrix include it, labelled zero-shot only."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vlmad.cli.study_cmd  # noqa: F401  (registers study/report/calibrate until vlmad.cli.commands imports it)
from vlmad.backbones import ClipBackbone
from vlmad.bench import load_results
from vlmad.cli import app
from vlmad.methods.prompt_learner import ObjectAgnosticPrompts
from vlmad.training.prompts_io import save_prompts

ARCH = "vlmad-tiny-vit-4l"


def _section(html: str, name: str) -> str:
    return html.split(f'<section id="{name}">')[1].split("</section>")[0]


@pytest.fixture(scope="module")
def three_run(tmp_path_factory, mvtec_root):
    tmp = tmp_path_factory.mktemp("three")
    bb = ClipBackbone.load(ARCH, random_weights=True)
    width = bb.model.token_embedding.weight.shape[1]
    prompts = ObjectAgnosticPrompts.seeded(width, 3, n_ctx=4, depth=2, t_n_ctx=2)
    # seeded, not trained: only the sidecar's training record (VisA) matters to the cross-domain matrix
    training = {"data": {"kind": "visa", "regime": "cross-dataset", "categories": ["candle", "pcb1"]}}
    path = save_prompts(prompts, tmp / "prompts-visa.safetensors", bb, training)
    spec = tmp / "three.yaml"
    spec.write_text(
        "name: three\n"
        "datasets: [mvtec]\n"
        "methods:\n"
        "  - winclip\n"
        "  - {method: aprilgan, options: {allow_untrained: true}}\n"
        f"  - {{method: anomalyclip, options: {{prompts: '{path}', check_weights: false}}}}\n"
        "shots: [0, 1]\nseeds: [0]\nlimit: 4\n"
        "calibration: {mode: normal-quantile, quantile: 0.99, max_images: 4}\n"
        "report: {gallery: false}\n"
    )
    out = tmp / "run"
    args = ["study", str(spec), "--root", f"mvtec={mvtec_root}", "--out", str(out), "--model", ARCH]
    result = CliRunner().invoke(app, [*args, "--random-weights", "--no-flops", "--num-workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_zero_shot_only_method_gets_zero_shot_rows_only(three_run):
    rows = load_results(three_run)
    assert all(r["status"] == "ok" for r in rows), [r.get("reason") for r in rows if r["status"] != "ok"]
    shots = {m: sorted({r["shots"] for r in rows if r["method"] == m}) for m in ("winclip", "aprilgan", "anomalyclip")}
    assert shots == {"winclip": [0, 1], "aprilgan": [0, 1], "anomalyclip": [0]}
    mine = [r for r in rows if r["method"] == "anomalyclip"]
    assert len(mine) == 2 and all(r["detector"]["prompts_training_data"]["kind"] == "visa" for r in mine)


def test_report_sections_include_the_zero_shot_only_method(three_run):
    html = (three_run / "report.html").read_text()
    data = json.loads(html.split('id="vlmad-report-data">')[1].split("</script>")[0])
    labels = {c["label"] for c in data["configs"]}
    assert {"winclip 0-shot", "aprilgan 1-shot", "anomalyclip 0-shot"} <= {x.replace(" †", "") for x in labels}
    curves = _section(html, "shot-curves")
    assert "anomalyclip" in curves and "zero-shot only" in curves
    k_shot = [r for r in data["recommendations"] if r["topic"] == "1-shot"]
    assert k_shot and all("anomalyclip" in r["text"] and "zero-shot only" in r["text"] for r in k_shot)
    zero = [r for r in data["recommendations"] if r["topic"].startswith("zero-shot")]
    assert zero  # AnomalyCLIP competes in the zero-shot recommendations like the others
    (cell,) = data["cross_domain"]  # prompts trained on VisA, evaluated on MVTec AD
    assert cell["method_label"] == "anomalyclip" and cell["trained_on"] == "visa"
    assert cell["evaluated_on"] == "MVTec AD" and cell["pixel_auroc"] is not None
    assert "AnomalyCLIP" in _section(html, "published")
