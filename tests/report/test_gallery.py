"""Gallery picks, the map cache and the image | mask | overlay panel."""

from __future__ import annotations

import numpy as np

from vlmad.report.gallery import load_cache, save_cache, select_images, triptych


def _rec(path, label, score):
    return {"path": path, "label": label, "defect_type": "good" if label == "normal" else "scratch", "score": score}


def test_selection_best_worst_borderline():
    records = [
        _rec("g1", "normal", 0.1),
        _rec("g2", "normal", 0.7),
        _rec("g3", "normal", 0.3),
        _rec("b1", "anomalous", 0.9),
        _rec("b2", "anomalous", 0.2),
        _rec("b3", "anomalous", 0.52),
        {"path": "x", "label": "normal", "defect_type": "good", "score": None},
    ]
    picks = {p.kind: p.path for p in select_images(records, threshold=0.5)}
    assert picks == {
        "best detection": "b1",
        "highest-scored normal": "g2",
        "lowest-scored anomaly": "b2",
        "borderline": "b3",
    }
    two = select_images(records, threshold=0.5, per_kind=2)
    assert len({p.path for p in two}) == len(two) == 7 - 1  # every scored image once at most


def test_cache_round_trip(tmp_path):
    maps = {"k1": (0.25, np.random.default_rng(0).random((8, 8)).astype(np.float32))}
    save_cache(tmp_path / "c.npz", maps)
    back = load_cache(tmp_path / "c.npz")
    assert back["k1"][0] == 0.25 and np.allclose(back["k1"][1], maps["k1"][1], atol=1e-3)
    assert load_cache(tmp_path / "missing.npz") == {}


def test_triptych(mvtec_root):
    cat = mvtec_root / "demo_object"
    img = next((cat / "test" / "scratch").glob("*.png"))
    mask = cat / "ground_truth" / "scratch" / f"{img.stem}_mask.png"
    panel = triptych(
        img,
        mask,
        np.random.default_rng(0).random((16, 16)),
        0.0,
        1.0,
        height=64,
        stamp="random weights - scores are meaningless",
    )
    assert panel.size == (3 * 64 + 8, 64 + 16)  # the stamp gets its own strip
    normal = triptych(next((cat / "test" / "good").glob("*.png")), None, np.zeros((4, 4)), 0.0, 1.0, height=32)
    assert normal.size == (3 * 32 + 8, 32) and np.asarray(normal)[:, 36:68].max() == 0  # black mask: normal image
