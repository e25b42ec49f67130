"""The grid runner end to end on generated MVTec / VisA layouts with a tiny random-weights WinCLIP."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from vlmad.bench import build_detector_from_spec, load_results, read_scores, run_benchmark
from vlmad.methods.base import Detector
from vlmad_runtime.errors import VlmadError

DETECTOR_FIELDS = (
    "method",
    "model",
    "weights_id",
    "image_size",
    "prompt_set",
    "shots",
    "transductive",
    "random_weights",
)


def test_visa_grid_rows_protocol_references_and_reports(visa_root, make_config):
    out = run_benchmark(make_config(visa_root, kind="visa", shots=[0, 2], seeds=[0, 1], num_workers=2, flops=True))
    rows = load_results(out)
    # zero-shot once per category (seeds do not apply), few-shot once per seed
    assert sorted((r["dataset"]["category"], r["shots"], r["seed"]) for r in rows) == sorted(
        (c, k, s) for c in ("demo_object", "demo_texture") for k, s in ((0, None), (2, 0), (2, 1))
    )
    train_names = {p.name for p in (visa_root / "demo_object" / "Data" / "Images" / "Normal").iterdir()}
    csv_rows = list(csv.DictReader(open(visa_root / "split_csv" / "1cls.csv")))
    train_files = {r["image"] for r in csv_rows if r["split"] == "train"}
    test_files = {r["image"] for r in csv_rows if r["split"] == "test"}
    for r in rows:
        assert r["status"] == "ok"
        assert set(DETECTOR_FIELDS) <= set(r["detector"])
        assert r["detector"]["random_weights"] is True and r["random_weights"] is True
        assert r["detector"]["shots"] == r["shots"]
        assert r["dataset"]["kind"] == "visa" and r["dataset"]["root"] == str(visa_root.resolve())
        assert r["protocol"]["eval_resolution"] == "input" and r["protocol"]["eval_size"] == [64, 64]
        assert r["protocol"]["aupro"] == "exact" and r["protocol"]["check_protocol"] == {}
        assert r["vlmad_version"] and r["run"]["torch"]
        assert {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"} <= set(
            r["metrics"]
        )
        # references: exactly K, from the train split only, never a test image
        assert len(r["references"]) == r["shots"]
        assert set(r["references"]) <= train_files and not set(r["references"]) & test_files
        scores = read_scores(out / r["scores_file"])
        assert len(scores) == r["n_images"]["test"] == 6 and {s["path"] for s in scores} <= test_files
        eff = r["efficiency"]
        assert eff["params_backbone"] > 0 and eff["ms_per_image"] > 0 and eff["gflops_per_image"] > 0
        assert r["timing"]["predict_s"] > 0
    assert train_names  # sanity
    # the two seeds draw different references, the same seed the same ones
    two = {r["seed"]: r["references"] for r in rows if r["shots"] == 2 and r["dataset"]["category"] == "demo_object"}
    assert two[0] != two[1]
    for name in (
        "tables/visa_image.md",
        "tables/visa_image.csv",
        "tables/visa_pixel.md",
        "tables/visa_pixel.csv",
        "efficiency.md",
        "efficiency.csv",
        "summary.md",
        "run.json",
    ):
        assert (out / name).is_file(), name
    image_md = (out / "tables/visa_image.md").read_text()
    assert "winclip+ 2-shot †" in image_md and "random weights - scores are meaningless" in image_md
    assert "macro mean" in image_md and "± " in image_md
    assert "AUPRO" in (out / "tables/visa_pixel.md").read_text()
    eff_md = (out / "efficiency.md").read_text()
    assert "ms/img" in eff_md and "GFLOPs/img" in eff_md
    run = json.loads((out / "run.json").read_text())["latest"]
    assert run["environment"]["torch"] and run["grid"]["to_compute"] == 6 and run["computed"] == 6


def test_finished_grid_recomputes_nothing_and_builds_no_model(mvtec_root, make_config):
    built = []

    def factory(spec):
        built.append(spec["label"])
        return build_detector_from_spec(spec)

    cfg = make_config(mvtec_root, shots=[0, 1], seeds=[0], detector_factory=factory, limit=2)
    out = run_benchmark(cfg)
    before = (out / "results.jsonl").read_bytes()
    assert built == ["winclip"] and len(load_results(out)) == 4
    run_benchmark(cfg)
    assert built == ["winclip"], "a finished grid must not build a detector"
    assert (out / "results.jsonl").read_bytes() == before
    # growing the grid computes only the new rows
    cfg.seeds = [0, 1]
    run_benchmark(cfg)
    rows = load_results(out)
    assert len(rows) == 6 and len(built) == 2
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert all(r["n_images"]["test"] == 2 and r["n_images"]["anomalous"] == 1 for r in rows)  # --limit, balanced


class Wrapped(Detector):
    """WinCLIP with a protocol check that refuses demo_object and a transductive finalize."""

    transductive = True

    def __init__(self, inner):
        self.inner = inner
        self.backbone = inner.backbone

    def setup(self, class_name):
        self.inner.setup(class_name)

    def fit(self, reference_images):
        self.inner.fit(reference_images)

    def reset_references(self):
        self.inner.reset_references()

    def predict(self, images):
        return self.inner.predict(images)

    @property
    def image_size(self):
        return self.inner.image_size

    def info(self):
        info = self.inner.info()
        info.transductive = True
        return info

    def check_protocol(self, dataset_kind, dataset_root, category, force=False):
        if category == "demo_object":
            if not force:
                raise VlmadError("heads were trained on demo_object", "use heads trained elsewhere")
            return {"leakage_forced": True}
        return {"aux_data": "none"}

    def finalize(self, image_scores, anomaly_maps):
        return torch.arange(len(image_scores), dtype=torch.float32), anomaly_maps


def test_protocol_check_refusal_force_and_finalize(mvtec_root, make_config):
    factory = lambda spec: Wrapped(build_detector_from_spec(spec))  # noqa: E731
    cfg = make_config(mvtec_root, detector_factory=factory, limit=4)
    out = run_benchmark(cfg)
    rows = {r["dataset"]["category"]: r for r in load_results(out)}
    assert rows["demo_object"]["status"] == "refused" and "trained on demo_object" in rows["demo_object"]["reason"]
    ok = rows["demo_texture"]
    assert ok["status"] == "ok" and ok["protocol"]["check_protocol"] == {"aux_data": "none"}
    assert ok["protocol"]["transductive"] is True
    # finalize() ran over the whole category before the scores were stored and the metrics computed
    assert [s["score"] for s in read_scores(out / ok["scores_file"])] == [float(i) for i in range(4)]
    assert "(transductive)" in (out / "tables/mvtec_image.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "refused" in summary and "trained on demo_object" in summary
    # refused rows are recorded, so a rerun does not retry them ...
    run_benchmark(cfg)
    assert len(load_results(out)) == 2
    # ... --force-protocol runs the refused rows only, labelled as forced; the others are kept as they were
    texture_row = (out / "results.jsonl").read_text().splitlines()
    cfg.force_protocol = True
    run_benchmark(cfg)
    rows = {r["dataset"]["category"]: r for r in load_results(out)}
    assert len(rows) == 2 and (out / "results.jsonl").read_text().splitlines()[:2] == texture_row
    obj = rows["demo_object"]
    assert obj["status"] == "ok" and obj["protocol"]["protocol_forced"] is True
    assert obj["protocol"]["check_protocol"] == {
        "leakage_forced": True,
        "refused_without_force": "heads were trained on demo_object",
    }
    assert rows["demo_texture"]["protocol"]["protocol_forced"] is False
    image_md = (out / "tables/mvtec_image.md").read_text()
    assert "(forced)" in image_md and "protocol check forced" in image_md


@pytest.mark.parametrize("resolution, shape", [("original", [64, 64]), (32, [32, 32])])
def test_eval_resolution_and_aupro_variants(mvtec_root, make_config, resolution, shape):
    out = run_benchmark(
        make_config(mvtec_root, categories=["demo_object"], eval_resolution=resolution, aupro="both", limit=2)
    )
    (row,) = load_results(out)
    assert row["protocol"]["eval_resolution"] == resolution and row["protocol"]["eval_size"] == shape
    assert {"aupro", "aupro_legacy200"} <= set(row["metrics"])
    assert "AUPRO-200" in (out / "tables/mvtec_pixel.md").read_text()


def test_unreadable_image_skip_records_it_and_stop_aborts(tmp_path, mvtec_root, make_config):
    root = tmp_path / "data"
    shutil.copytree(mvtec_root, root)
    bad = root / "demo_texture" / "test" / "good" / "001.png"
    bad.write_bytes(b"this is not a png")
    out = run_benchmark(make_config(root, categories=["demo_texture"], out=tmp_path / "skip", num_workers=2))
    (row,) = load_results(out)
    assert row["status"] == "ok" and row["n_images"] == {"test": 5, "normal": 2, "anomalous": 3, "skipped": 1}
    assert row["skipped_images"][0]["path"] == "demo_texture/test/good/001.png"
    assert row["skipped_images"][0]["reason"]
    scores = read_scores(out / row["scores_file"])
    assert [s["error"] != "" for s in scores].count(True) == 1
    assert "001.png" in (out / "tables/mvtec_image.md").read_text()
    with pytest.raises(VlmadError, match="001.png") as err:
        run_benchmark(make_config(root, categories=["demo_texture"], out=tmp_path / "stop", on_error="stop"))
    assert "--on-error skip" in err.value.hint
    assert not (tmp_path / "stop" / "results.jsonl").exists()


def test_metrics_come_from_the_stored_scores(mvtec_root, make_config):
    """The row's image metrics equal scikit-learn's on the stored per-image scores (an independent computation:
    vlmad's own metric code on both sides could not catch a metric bug or a scores file out of step)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    out = run_benchmark(make_config(mvtec_root, categories=["demo_texture"], shots=[1], seeds=[3]))
    (row,) = load_results(out)
    scores = read_scores(out / row["scores_file"])
    labels = np.array([s["label"] == "anomalous" for s in scores])
    values = np.array([s["score"] for s in scores])
    assert labels.any() and not labels.all() and len(set(values.tolist())) > 1  # a non-degenerate check
    precision, recall, _ = precision_recall_curve(labels, values)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    independent = {
        "image_auroc": roc_auc_score(labels, values),
        "image_ap": average_precision_score(labels, values),
        "image_f1_max": float(f1.max()),
    }
    assert {k: row["metrics"][k] for k in independent} == pytest.approx(independent, abs=1e-9)
    assert row["seed"] == 3 and len(row["references"]) == 1
    assert row["references"][0].startswith("demo_texture/train/good/")


def test_too_few_references_is_a_recorded_row_error(mvtec_root, make_config):
    cfg = make_config(mvtec_root, categories=["demo_texture"], shots=[4], seeds=[0])
    out = run_benchmark(cfg)
    (row,) = load_results(out)
    assert row["status"] == "error" and "needs 4 normal train images" in row["reason"]
    assert "Rows not computed" in (out / "summary.md").read_text()
    built = []
    cfg.detector_factory = lambda spec: built.append(spec) or build_detector_from_spec(spec)
    run_benchmark(cfg)
    assert not built  # recorded failures are not retried ...
    cfg.retry_failed = True
    run_benchmark(cfg)
    assert len(built) == 1 and len(load_results(out)) == 1  # ... unless asked to
