"""Prompt sets: exact reference lists, file loading, validation, ablations."""

from __future__ import annotations

import json
import subprocess

import pytest

from vlmad.prompts import PROMPT_SETS, ablate, class_display_name, load_prompt_set
from vlmad_runtime.errors import UnknownNameError, VlmadError


def test_winclip_set_sizes_and_order():
    normal, anomalous = PROMPT_SETS["winclip"].build("bottle")
    assert len(normal) == 7 * 21 and len(anomalous) == 4 * 21
    assert normal[0] == "a cropped photo of the bottle." and anomalous[0] == "a cropped photo of the damaged bottle."
    assert normal[21] == "a cropped photo of the flawless bottle."
    assert len(set(normal)) == 7 * 20  # anomalib's duplicated jpeg template, kept for parity


def test_paper_set_differs_only_in_the_duplicate():
    a, p = PROMPT_SETS["winclip"].templates, PROMPT_SETS["winclip-paper"].templates
    diff = [i for i in range(21) if a[i] != p[i]]
    assert diff == [7] and p[7] == "a jpeg corrupted photo of a {}." and len(set(p)) == 21


# The VAND-APRIL-GAN reference's lists (prompt_ensemble.py: prompt_normal, prompt_abnormal, prompt_templates),
# pinned entry by entry and in order: a changed, dropped or reordered entry changes the text embeddings.
APRILGAN_REFERENCE_NORMAL = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
APRILGAN_REFERENCE_ABNORMAL = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
APRILGAN_REFERENCE_TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def test_aprilgan_set_is_the_reference_lists_exactly():
    ps = PROMPT_SETS["aprilgan"]
    assert ps.normal_states == APRILGAN_REFERENCE_NORMAL
    assert ps.anomalous_states == APRILGAN_REFERENCE_ABNORMAL
    assert ps.templates == APRILGAN_REFERENCE_TEMPLATES
    # the reference formats state-major: for each state, every template (prompted_sentence's loop order)
    normal, anomalous = ps.build("metal_nut")
    assert normal == [
        t.format(s.format("metal_nut")) for s in APRILGAN_REFERENCE_NORMAL for t in APRILGAN_REFERENCE_TEMPLATES
    ]
    assert anomalous == [
        t.format(s.format("metal_nut")) for s in APRILGAN_REFERENCE_ABNORMAL for t in APRILGAN_REFERENCE_TEMPLATES
    ]
    assert normal[0] == "a bad photo of a metal_nut." and anomalous[35] == "a bad photo of a broken metal_nut."
    assert anomalous[-1] == "this is one metal_nut with damage in the scene."


def test_category_names():
    assert class_display_name("metal_nut") == "metal nut"
    assert PROMPT_SETS["winclip"].build(class_display_name("metal_nut"))[1][0] == (
        "a cropped photo of the damaged metal nut."
    )


def test_user_sets_from_yaml_json_and_dict(tmp_path):
    spec = {"normal_states": ["good {}"], "anomalous_states": ["bad {}"], "templates": ["a photo of a {}."]}
    (tmp_path / "p.json").write_text(json.dumps(spec))
    (tmp_path / "p.yaml").write_text(
        "normal_states: ['good {}']\nanomalous_states: ['bad {}']\ntemplates: ['a photo of a {}.']\n"
    )
    for src in (tmp_path / "p.json", str(tmp_path / "p.yaml"), spec):
        ps = load_prompt_set(src)
        assert ps.build("cup") == (["a photo of a good cup."], ["a photo of a bad cup."])


def test_bad_sets_are_clear_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown prompt set"):
        load_prompt_set("nope")
    with pytest.raises(VlmadError, match="lacks templates"):
        load_prompt_set({"normal_states": ["{}"], "anomalous_states": ["bad {}"]})
    with pytest.raises(VlmadError, match="exactly one"):
        load_prompt_set({"normal_states": ["good"], "anomalous_states": ["bad {}"], "templates": ["{}"]})
    (tmp_path / "broken.yaml").write_text("normal_states: [unclosed")
    with pytest.raises(VlmadError, match="cannot parse"):
        load_prompt_set(tmp_path / "broken.yaml")


def test_ablations():
    base = PROMPT_SETS["winclip"]
    assert len(ablate(base, "states-only").build("x")[0]) == 7
    assert len(ablate(base, "templates-only").build("x")[0]) == 21
    assert ablate(base, "single").build("x") == (["a photo of a x."], ["a photo of a damaged x."])
    with pytest.raises(UnknownNameError):
        ablate(base, "half")


@pytest.mark.oracle
def test_winclip_set_is_anomalib_identical(oracle_python):
    code = (
        "import json; from anomalib.models.image.winclip.prompting import create_prompt_ensemble as c; "
        "print(json.dumps(c('metal nut')))"
    )
    out = subprocess.run([oracle_python, "-c", code], capture_output=True, text=True, check=True).stdout
    normal, anomalous = json.loads(out.strip().splitlines()[-1])
    assert (normal, anomalous) == PROMPT_SETS["winclip"].build("metal nut")
