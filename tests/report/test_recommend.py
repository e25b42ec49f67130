"""Recommendations follow the numbers they are given."""

from __future__ import annotations

from vlmad.report.recommend import Entry, recommend


def _e(ds, label, method, shots, auroc, aupro=None, ms=None, spread=None):
    metrics = {"image_auroc": (auroc, spread)}
    if aupro is not None:
        metrics["aupro"] = (aupro, None)
    return Entry(ds, label, method, shots, metrics, ms, "GPU-X" if ms else None)


def test_zero_few_shot_and_latency():
    entries = [
        _e("MVTec AD", "winclip 0-shot", "winclip", 0, 91.0, 64.0, 40.0),
        _e("MVTec AD", "aprilgan 0-shot", "aprilgan", 0, 86.0, 80.0, 20.0),
        _e("MVTec AD", "winclip+ 1-shot", "winclip", 1, 93.0, None, 60.0, spread=0.4),
        _e("MVTec AD", "aprilgan 1-shot", "aprilgan", 1, 92.8, None, 25.0, spread=0.3),
    ]
    recs = {r.topic: r for r in recommend(entries)}
    zc = recs["zero-shot classification"]
    assert zc.numbers["best"] == "winclip 0-shot" and zc.numbers["margin"] == 5.0 and not zc.numbers["tie"]
    assert "91.0 %" in zc.text and "5.0 pt ahead of aprilgan 0-shot" in zc.text
    assert recs["zero-shot segmentation"].numbers["best"] == "aprilgan 0-shot"  # AUPRO decides maps
    one = recs["1-shot"]
    assert one.numbers["best"] == "winclip+ 1-shot" and one.numbers["tie"]  # 0.2 pt < seed spread 0.4
    assert "+2.0 pt over its zero-shot" in one.text
    front = [label for label, _, _ in recs["latency budget"].numbers["front"]]
    assert front == ["aprilgan 0-shot", "aprilgan 1-shot", "winclip+ 1-shot"]


def test_changing_numbers_changes_the_answer():
    a = [_e("VisA", "winclip 0-shot", "winclip", 0, 70.0), _e("VisA", "aprilgan 0-shot", "aprilgan", 0, 80.0)]
    assert recommend(a)[0].numbers["best"] == "aprilgan 0-shot"
    a[0].metrics["image_auroc"] = (85.0, None)
    assert recommend(a)[0].numbers["best"] == "winclip 0-shot"


def test_across_datasets():
    entries = [
        _e("MVTec AD", "w", "winclip", 0, 90.0),
        _e("MVTec AD", "a", "aprilgan", 0, 80.0),
        _e("VisA", "w", "winclip", 0, 70.0),
        _e("VisA", "a", "aprilgan", 0, 78.0),
    ]
    across = [r for r in recommend(entries) if r.topic == "across datasets"]
    assert across and across[0].numbers["ranking"][0] == ("winclip", 80.0)
