"""Pure protocol rules: reference draws, --limit subsets, option parsing, row-key ingredients."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmad.bench import protocol as P
from vlmad.data.sample import Sample
from vlmad_runtime.errors import VlmadError


def _train(n: int) -> list[Sample]:
    return [Sample(Path(f"/d/c/train/good/{i:03d}.png"), "normal", "c", "train") for i in range(n)]


def test_references_are_seeded_nested_and_from_train_only():
    train = _train(10)
    a = P.select_references(train, 4, seed=3)
    assert a == P.select_references(train, 4, seed=3)  # deterministic
    assert a != P.select_references(train, 4, seed=4)
    assert P.select_references(train, 1, seed=3)[:1] == a[:1]  # nested draws: 1-shot ⊂ 2-shot ⊂ ...
    assert all(s.split == "train" and not s.is_anomalous for s in a)
    test_sample = Sample(Path("/d/c/test/good/000.png"), "normal", "c", "test")
    with pytest.raises(VlmadError, match="train-split"):
        P.select_references([*train, test_sample], 1, seed=0)
    with pytest.raises(VlmadError, match="needs 11 normal train images"):
        P.select_references(train, 11, seed=0)


def _test_split() -> list[Sample]:
    good = [Sample(Path(f"/d/c/test/good/{i:03d}.png"), "normal", "c", "test") for i in range(5)]
    bad = [
        Sample(Path(f"/d/c/test/{d}/{i:03d}.png"), "anomalous", "c", "test", d, Path(f"/m/{d}{i}.png"))
        for d in ("crack", "hole")
        for i in range(3)
    ]
    return good + bad


def test_limit_is_balanced_deterministic_and_round_robin_over_defects():
    samples = _test_split()
    picked = P.limit_samples(samples, 4)
    assert picked == P.limit_samples(samples, 4)
    assert sum(s.is_anomalous for s in picked) == 2
    assert {s.defect_type for s in picked if s.is_anomalous} == {"crack", "hole"}
    assert [s.image_path.name for s in picked if not s.is_anomalous] == ["000.png", "001.png"]
    # one kind short: the other fills up
    only_two_bad = samples[:5] + samples[5:7]
    assert len(P.limit_samples(only_two_bad, 6)) == 6
    assert P.limit_samples(samples, None) == samples
    assert P.limit_samples(samples, 100) == samples


def test_option_parsing():
    assert P.parse_eval_resolution("input") == "input"
    assert P.parse_eval_resolution("Original") == "original"
    assert P.parse_eval_resolution("256") == 256
    with pytest.raises(VlmadError, match="evaluation resolution"):
        P.parse_eval_resolution("full")
    assert P.parse_aupro("both") == ("exact", "legacy200")
    with pytest.raises(VlmadError):
        P.parse_aupro("fast")
    assert P.parse_int_list("0, 1,1,4", "shots") == [0, 1, 4]
    with pytest.raises(VlmadError, match="not an integer"):
        P.parse_int_list("1,x", "seeds")


def test_row_key_ingredients(tmp_path):
    a = tmp_path / "a" / "w.safetensors"
    b = tmp_path / "b" / "w.safetensors"
    for p, data in ((a, b"one"), (b, b"one")):
        p.parent.mkdir()
        p.write_bytes(data)
    # runtime keys never enter the key; files enter by content
    k1 = P.keyed_kwargs({"checkpoint": str(a), "device": "cuda", "batch_size": 32})
    k2 = P.keyed_kwargs({"checkpoint": str(b), "device": "cpu"})
    assert k1 == k2 and "device" not in k1
    b.write_bytes(b"two")
    assert P.keyed_kwargs({"checkpoint": str(b)}) != k1
    assert P.hash_key({"x": 1, "y": [1, 2]}) == P.hash_key({"y": (1, 2), "x": 1})


def test_weights_identity(tmp_path):
    import torch
    from safetensors.torch import save_file

    assert P.weights_identity("winclip", {})["tag"] == "laion400m_e31"
    assert P.weights_identity("winclip", {"random_weights": True})["source"] == "random"
    assert P.weights_identity("winclip", {"model": "ViT-B-16"})["tag"] is None
    ck = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(ck), metadata={"arch": "ViT-B-16-plus-240", "pretrained": "laion400m_e31"})
    ident = P.weights_identity("winclip", {"checkpoint": str(ck)})
    assert ident["tag"] == "laion400m_e31" and ident["tag_from"] == "checkpoint metadata"
