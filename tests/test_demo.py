"""`vlmad demo`: the main job end to end — dataset, zero-/few-shot, overlays, summary; offline behaviour."""

from __future__ import annotations

import json
import re

import pytest

from vlmad.demo import run_demo
from vlmad_runtime.errors import VlmadError


def test_demo_with_a_checkpoint_writes_summary_and_heatmaps(tmp_path, weights_file):
    res = run_demo(
        tmp_path / "demo",
        model="vlmad-tiny-vit-240",
        checkpoint=weights_file("vlmad-tiny-vit-240"),
        shots=2,
        n_test_good=2,
        n_test_bad=2,
    )
    assert not res.random_weights and set(res.metrics) == {"zero-shot", "2-shot"}
    for name in ("zero-shot", "2-shot"):
        assert len(list((tmp_path / "demo" / name / "overlays").glob("*.png"))) == 4
        assert (tmp_path / "demo" / name / "scores.csv").exists()
        assert 0.0 <= res.metrics[name]["image_auroc"] <= 1.0
    md = res.summary_md.read_text()
    assert "zero-shot" in md and "2-shot" in md and "random weights" not in md
    html = res.summary_html.read_text()
    assert html.count("<img") == 8 and "image AUROC" in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(set(sources)) == 8 and all((tmp_path / "demo" / src).is_file() for src in sources)
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["random_weights"] is False


@pytest.mark.slow
def test_demo_offline_says_so_and_only_falls_back_when_asked(tmp_path, monkeypatch, capsys):
    """The real default (ViT-B-16-plus-240 / laion400m_e31) offline: a plain message, and random weights only
    with the explicit fallback flag, stamped on every output."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(VlmadError, match="no pretrained weights") as err:
        run_demo(tmp_path / "strict", shots=1, n_test_good=1, n_test_bad=1)
    assert "--fallback-random-weights" in err.value.hint
    out = capsys.readouterr()
    assert "could not be loaded" in out.err and "--checkpoint" in out.err
    res = run_demo(tmp_path / "fallback", shots=1, n_test_good=1, n_test_bad=1, fallback_random_weights=True)
    assert res.random_weights
    assert "RANDOM WEIGHTS - SCORES ARE MEANINGLESS" in res.summary_md.read_text()
    assert "random weights - scores are meaningless" in res.summary_html.read_text()
    assert "Falling back to RANDOM WEIGHTS" in capsys.readouterr().err
    rows = (tmp_path / "fallback" / "zero-shot" / "scores.csv").read_text().splitlines()[1:]
    assert rows and all(r.endswith("random weights - scores are meaningless") for r in rows)
