"""Published-number matching: shown only when the protocol matches, 'n/a' with the reason otherwise."""

from __future__ import annotations

import copy

import pytest

from vlmad.bench.protocol import hash_key
from vlmad.bench.published import compare, find_entry, load_published
from vlmad.bench.tables import build_table, group_configs, macro_stat
from vlmad.data.mvtec import MVTEC_CATEGORIES

INFO = {
    "method": "winclip",
    "model": "ViT-B-16-plus-240",
    "weights_id": "ViT-B-16-plus-240/laion400m_e31",
    "image_size": 240,
    "prompt_set": "winclip",
    "shots": 0,
    "transductive": False,
    "random_weights": False,
    "scales": [2, 3],
    "image_scale": True,
    "precision": "fp32",
    "temperature": 0.07,
}
WEIGHTS = {"source": "pretrained", "model": "ViT-B-16-plus-240", "tag": "laion400m_e31", "tag_from": "default"}


def fake_row(category: str, seed=None, shots: int = 0, value: float = 0.9, **over):
    row = {
        "status": "ok",
        "method": "winclip",
        "method_label": "winclip",
        "method_spec": {"method": "winclip"},
        "method_options": {},
        "weights": dict(WEIGHTS),
        "detector": {**INFO, "shots": shots},
        "random_weights": False,
        "shots": shots,
        "seed": seed,
        "dataset": {"kind": "mvtec", "root": "/data/mvtec", "category": category},
        "protocol": {
            "eval_resolution": "input",
            "eval_size": [240, 240],
            "aupro": "exact",
            "limit": None,
            "protocol_forced": False,
            "transductive": False,
        },
        "metrics": {
            "image_auroc": value,
            "image_ap": value,
            "image_f1_max": value,
            "pixel_auroc": value,
            "aupro": value,
        },
        "n_images": {"skipped": 0},
    }
    for k, v in over.items():
        row[k] = v
    row["row_key"] = hash_key({"c": category, "s": seed, "k": shots, "o": repr(over)})
    return row


def full_grid(**over):
    return [fake_row(c, **over) for c in MVTEC_CATEGORIES]


def facts_of(rows):
    (config,) = group_configs(rows)
    return config.facts()


def test_published_table_is_loaded_with_sources():
    data = load_published()
    assert {"winclip", "aprilgan", "anomalyclip"} <= set(data["sources"])
    assert find_entry("winclip", "mvtec", 0)["metrics"]["image_auroc"] == 91.8
    assert find_entry("winclip", "visa", 4)["metrics"]["image_auroc"] == 87.3
    assert find_entry("aprilgan", "visa", 4)["metrics"]["aupro_legacy200"] == 90.2
    assert find_entry("winclip", "mvtec", 3) is None


def test_matching_protocol_shows_the_published_number():
    facts = facts_of(full_grid())
    c = compare(facts, "image_auroc")
    assert c.value == 91.8 and c.reason is None
    assert compare(facts, "aupro").value == 64.6
    assert compare(facts, "pixel_ap").value is None and compare(facts, "pixel_ap").reason is None  # not published


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda r: r.update(random_weights=True), "random weights"),
        (lambda r: r["weights"].update(tag="openai"), "not the published"),
        (lambda r: r["detector"].update(image_size=336), "input size 336"),
        (lambda r: r["detector"].update(prompt_set="winclip-paper"), "prompt_set=winclip-paper"),
        (lambda r: r["protocol"].update(eval_resolution="original"), "original resolution"),
        (lambda r: r["protocol"].update(limit=10), "--limit 10"),
        (lambda r: r["protocol"].update(protocol_forced=True), "--force-protocol"),
        (lambda r: r["protocol"].update(transductive=True), "transductive"),
        (lambda r: r["n_images"].update(skipped=1), "skipped"),
    ],
)
def test_any_protocol_difference_gives_na_with_reason(change, reason):
    rows = full_grid()
    for r in rows:
        change(r)
    c = compare(facts_of(rows), "image_auroc")
    assert c.value is None and reason in c.reason


def test_subset_of_categories_and_aupro_variant_are_not_compared():
    c = compare(facts_of(full_grid()[:3]), "image_auroc")
    assert c.value is None and "3 of 15" in c.reason
    facts = facts_of(aprilgan_grid(shots=4, seed=0))
    assert "200-threshold" in compare(facts, "aupro").reason
    assert "transductive" in compare(facts, "aupro_legacy200").reason  # published 4-shot APRIL-GAN is transductive


def aprilgan_grid(shots: int = 0, seed=None, **detector):
    """A full MVTec AD grid of APRIL-GAN rows with the reference's recorded protocol, ``detector`` overriding."""
    rows = [fake_row(c, shots=shots, seed=seed) for c in MVTEC_CATEGORIES]
    for r in rows:
        r.update(method="aprilgan", method_label="aprilgan")
        r["weights"] = {"source": "pretrained", "model": "ViT-L-14-336", "tag": "openai"}
        r["detector"] = {
            "method": "aprilgan",
            "model": "ViT-L-14-336",
            "weights_id": "ViT-L-14-336/openai",
            "image_size": 518,
            "prompt_set": "aprilgan",
            "shots": shots,
            "transductive": False,
            "random_weights": False,
            "stages": [6, 12, 18, 24],
            "heads": "visa.safetensors@abc",
            "heads_untrained": False,
            "class_name_style": "raw",
            "precision": "fp32",
            "activation": "GELU",
        }
        r["detector"].update(detector)
        for key in [k for k, v in detector.items() if v is None]:
            del r["detector"][key]
    return rows


def test_aprilgan_activation_is_part_of_the_compared_protocol():
    """Published APRIL-GAN numbers come from ViT-L-14-336 without QuickGELU and raw class names: a run with the
    other activation, an unrecorded one, or display names is not comparable."""
    assert compare(facts_of(aprilgan_grid()), "image_auroc").value == 86.1
    c = compare(facts_of(aprilgan_grid(activation="QuickGELU")), "image_auroc")
    assert c.value is None and c.reason == "activation QuickGELU, published with GELU"
    c = compare(facts_of(aprilgan_grid(activation=None)), "image_auroc")
    assert c.value is None and c.reason == "activation not recorded (published with GELU)"
    c = compare(facts_of(aprilgan_grid(class_name_style="display")), "image_auroc")
    assert c.value is None and "class_name_style=display" in c.reason


def test_table_shows_published_and_difference_only_for_comparable_columns():
    rows = full_grid(value=0.9) + [fake_row(c, value=0.5, random_weights=True) for c in MVTEC_CATEGORIES]
    for r in rows[15:]:
        r["detector"] = {**r["detector"], "random_weights": True, "weights_id": "random-init(seed=0)"}
    text, records = build_table(rows, "mvtec", "/data/mvtec", "mvtec", "image")
    lines = [line for line in text.splitlines() if line.startswith("| winclip 0-shot")]
    real = next(line for line in lines if "†" not in line)
    assert "laion400m_e31" in real  # the differing setting is named in the column label
    assert "| 90.0 | 91.8 | -1.8 |" in real
    fake = next(line for line in lines if "†" in line)
    assert "n/a[" in fake
    assert "random weights - scores are meaningless" in text
    macro = [r for r in records if r["category"] == "macro mean" and r["metric"] == "image_auroc"]
    assert sorted(r["published_pct"] is None for r in macro) == [False, True]


def test_seeds_give_mean_and_sample_std_of_the_macro():
    rows = [fake_row(c, seed=s, shots=1, value=v) for s, v in ((0, 0.8), (1, 0.9)) for c in ("a", "b")]
    (config,) = group_configs(rows)
    st = macro_stat(config, "image_auroc")
    assert st.n == 2 and st.mean == pytest.approx(0.85) and st.std == pytest.approx(0.0707107, rel=1e-5)
    # a missing (category, seed) cell leaves that seed out and says so
    st = macro_stat(next(iter(group_configs(copy.deepcopy(rows[:3])))), "image_auroc")
    assert st.n == 1 and "left out" in st.note
