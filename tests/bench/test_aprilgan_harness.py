"""APRIL-GAN in the harness, as a user runs it: `vlmad train aprilgan` on one dataset, then
`vlmad benchmark --methods aprilgan,winclip` on another (the paper's cross-dataset protocol), and the leakage
guard refusing (or, forced, labelling) an evaluation on the training categories."""

from __future__ import annotations

import json

ARCH = "vlmad-tiny-vit-4l"


def _rows(run):
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]


def test_train_then_benchmark_both_methods_with_leakage_guard(tmp_path, weights_file, cli, small_dataset):
    weights = str(weights_file(ARCH))
    visa = small_dataset("visa", "candle,pcb1", n_train=3, size=56)
    mvtec = small_dataset("mvtec", "bottle", n_train=3, size=56)
    trained = cli(
        [
            "train",
            "aprilgan",
            str(visa),
            "--kind",
            "visa",
            "--out",
            str(tmp_path / "heads"),
            "--epochs",
            "2",
            "--model",
            ARCH,
            "--checkpoint",
            weights,
        ],
    )
    assert trained.exit_code == 0, trained.output
    heads = tmp_path / "heads" / "epoch_002.safetensors"
    assert heads.exists() and heads.with_suffix(".json").exists()

    common = ["--model", ARCH, "--checkpoint", weights, "--set", f"aprilgan.heads={heads}", "--batch-size", "4"]
    run = tmp_path / "cross"
    res = cli(
        [
            "benchmark",
            "--dataset",
            "mvtec",
            "--root",
            str(mvtec),
            "--methods",
            "aprilgan,winclip",
            "--shots",
            "0,1",
            "--out",
            str(run),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    rows = _rows(run)
    done = {(r["method"], r["shots"]) for r in rows if r["status"] == "ok"}
    assert done == {("aprilgan", 0), ("aprilgan", 1), ("winclip", 0), ("winclip", 1)}
    table = (run / "tables" / "mvtec_image.md").read_text()
    assert "aprilgan 0-shot" in table and "winclip 0-shot" in table and "winclip+ 1-shot" in table
    eff = (run / "efficiency.md").read_text()
    assert "aprilgan" in eff and "winclip" in eff

    # evaluating the heads on the categories they were trained on is refused ...
    leak = tmp_path / "leak"
    res = cli(
        ["benchmark", "--dataset", "visa", "--root", str(visa), "--methods", "aprilgan", "--out", str(leak), *common],
    )
    assert res.exit_code == 0, res.output
    assert {r["status"] for r in _rows(leak)} == {"refused"}
    # ... unless forced, and then every row carries the label
    res = cli(
        [
            "benchmark",
            "--dataset",
            "visa",
            "--root",
            str(visa),
            "--methods",
            "aprilgan",
            "--out",
            str(leak),
            "--force-protocol",
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    forced = [r for r in _rows(leak) if r["status"] == "ok"]
    assert len(forced) == 2 and all(r["protocol"]["protocol_forced"] for r in forced)
    assert all(r["protocol"]["check_protocol"]["leakage"].startswith("not-zero-shot") for r in forced)
    assert "(forced)" in (leak / "tables" / "visa_image.md").read_text()


def test_transductive_finalize_is_labelled(tmp_path, weights_file):
    import torch

    from vlmad import create_detector

    det = create_detector(
        "aprilgan",
        model=ARCH,
        checkpoint=str(weights_file(ARCH)),
        allow_untrained=True,
        transductive=True,
        use_cache=False,
    )
    det.setup("bottle")
    images = torch.rand(4, 3, 56, 56)
    det.fit(det.backbone.preprocess_tensor(torch.rand(1, 3, 56, 56)))
    pred = det.predict(det.backbone.preprocess_tensor(images))
    scores, maps = det.finalize(pred.image_scores, pred.anomaly_maps)
    map_max = pred.anomaly_maps.flatten(1).amax(1)
    norm = (map_max - map_max.min()) / (map_max.max() - map_max.min())
    torch.testing.assert_close(scores, 0.5 * (pred.cls_scores + norm), atol=1e-6, rtol=1e-6)
    assert det.info().transductive is True
    plain = create_detector(
        "aprilgan", model=ARCH, checkpoint=str(weights_file(ARCH)), allow_untrained=True, use_cache=False
    )
    s, m = plain.finalize(pred.image_scores, pred.anomaly_maps)
    assert s is pred.image_scores and m is pred.anomaly_maps
