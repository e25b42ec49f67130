"""`build_report` on a plain `vlmad benchmark` folder (no study.json), and the cross-domain matrix."""

from __future__ import annotations

import json
import shutil

import pytest

from vlmad.bench import BenchmarkConfig, DatasetSpec, load_results, method_spec, run_benchmark
from vlmad.report import build_report

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, mvtec_root):
    out = tmp_path_factory.mktemp("bench") / "run"
    run_benchmark(
        BenchmarkConfig(
            out=out,
            datasets=[DatasetSpec("mvtec", mvtec_root)],
            methods=[method_spec("winclip", **TINY)],
            shots=[0, 1],
            seeds=[0, 1],
            batch_size=4,
            flops=False,
        )
    )
    return out


def test_report_of_a_benchmark_folder(bench_run):
    from vlmad.report.build import compute_gallery_maps

    assert compute_gallery_maps(bench_run) == {}  # the run's step; the report below only reads the folder
    paths = build_report(bench_run)
    html = paths["html"].read_text()
    for section in (
        "overview",
        "recommend",
        "results",
        "shot-curves",
        "efficiency",
        "cross-domain",
        "prompt-ablation",
        "ablations",
        "published",
        "calibration",
        "gallery",
        "configurations",
    ):
        assert f'<section id="{section}">' in html, section
    assert "vlmad benchmark report" in html and "No cross-domain runs in this study" in html
    assert "No prompt ablation in this study" in html and "No deploy.json in this run" in html
    # the gallery step rebuilt the detector from run.json's method spec and stored its maps
    assert html.count("data-gallery-item=") == 2 * 4
    assert len(list((bench_run / "report_files" / "gallery_cache").glob("*.npz"))) == 2
    assert " ± " in html  # few-shot cells: mean ± std over the two seeds
    data = json.loads(html.split('id="vlmad-report-data">')[1].split("</script>")[0])
    assert all(g["score"] == pytest.approx(g["recomputed_score"], abs=1e-4) for g in data["gallery"])


def test_cross_domain_matrix_from_heads_rows(bench_run, tmp_path):
    run = tmp_path / "xd"
    shutil.copytree(bench_run, run)
    rows = [r for r in load_results(run) if r["shots"] == 0]
    extra = []
    for r in rows:
        ok = json.loads(json.dumps(r))
        ok.update(row_key=r["row_key"] + "v", method="aprilgan", method_label="aprilgan:visa-heads")
        ok["detector"] = {
            **r["detector"],
            "method": "aprilgan",
            "heads_training_data": {"kind": "visa", "regime": "cross-dataset", "categories": ["candle"]},
        }
        refused = {k: v for k, v in r.items() if k not in ("detector", "metrics", "efficiency", "scores_file")}
        refused.update(
            row_key=r["row_key"] + "m",
            method="aprilgan",
            method_label="aprilgan:mvtec-heads",
            status="refused",
            reason="not-zero-shot: heads trained on mvtec/demo_object test images",
        )
        extra += [ok, refused]
    extra.append(
        {
            **extra[0],
            "row_key": "mvtec-heads-ok",
            "method_label": "aprilgan:mvtec-heads",
            "detector": {**extra[0]["detector"], "heads_training_data": {"kind": "mvtec", "regime": "cross-dataset"}},
            "dataset": {**extra[0]["dataset"], "kind": "visa", "root": "/elsewhere"},
        }
    )
    with open(run / "results.jsonl", "a") as fh:
        for r in extra:
            fh.write(json.dumps(r) + "\n")
    html = build_report(run, gallery=False)["html"].read_text()
    assert 'data-figure="cross-domain"' in html and "refused: leakage (same dataset)" in html
    assert 'data-trained="visa" data-evaluated="MVTec AD"' in html
    data = json.loads(html.split('id="vlmad-report-data">')[1].split("</script>")[0])
    (cell,) = [c for c in data["cross_domain"] if c["trained_on"] == "visa"]
    macro = sum(r["metrics"]["pixel_auroc"] for r in rows) / len(rows)
    assert cell["pixel_auroc"] == pytest.approx(macro, abs=1e-12)


def test_report_reads_the_folder_only(bench_run, tmp_path):
    """Without stored gallery maps the report says so; it never rebuilds a detector to compute them."""
    run = tmp_path / "no-maps"
    shutil.copytree(bench_run, run)
    shutil.rmtree(run / "report_files" / "gallery_cache", ignore_errors=True)
    html = build_report(run)["html"].read_text()
    assert "data-gallery-item=" not in html and "no maps (not stored in this run folder" in html
    assert not (run / "report_files" / "gallery_cache").exists()
