"""Study specs: shipped presets and validation of hand-written YAML."""

from __future__ import annotations

import pytest

from vlmad.study import list_presets, load_study_spec, parse_study_spec
from vlmad.study.spec import StudySpec
from vlmad_runtime.errors import UnknownNameError, VlmadError


def test_presets_ship_and_parse():
    assert {"seed-full", "prompt-ablation", "quick"} <= set(list_presets())
    full = load_study_spec("seed-full")
    assert full.dataset_kinds() == ["mvtec", "visa"]
    assert [m.method for m in full.methods] == ["winclip", "aprilgan"]
    assert full.shots == [0, 1, 2, 4] and full.seeds == [0, 1, 2] and full.limit is None
    prompts = load_study_spec("prompt-ablation")
    assert [a.axis for a in prompts.ablations] == ["prompts"]
    assert prompts.ablations[0].values[:4] == ["full", "states-only", "templates-only", "single"]
    quick = load_study_spec("quick")
    assert {a.axis for a in quick.ablations} == {"prompts", "window_scales", "stages", "resolution"}
    assert quick.limit and quick.calibration.mode == "normal-quantile"
    assert StudySpec.from_dict(quick.as_dict()) == quick  # study.json round trip


def test_yaml_path_and_relative_files(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "normal_states: ['{}']\nanomalous_states: ['broken {}']\ntemplates: ['a photo of a {}.']\n"
    )
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "datasets: [{kind: folder, root: data}]\nmethods: [winclip]\n"
        "ablations:\n  prompts: {values: [full, mine.yaml, {name: two, normal_states: ['{}'], "
        "anomalous_states: ['bad {}'], templates: ['{}']}]}\n"
    )
    spec = load_study_spec(spec_file)
    assert spec.name == "s" and spec.datasets[0].root == str(tmp_path / "data")
    assert spec.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    "data, match",
    [
        ({"datasets": ["mvtec"], "methods": ["winclip"], "oops": 1}, "unknown key 'oops'"),
        ({"datasets": ["nope"], "methods": ["winclip"]}, "unknown dataset kind"),
        ({"datasets": ["mvtec", "mvtec"], "methods": ["winclip"]}, "listed twice"),
        ({"datasets": ["mvtec"], "methods": ["nope"]}, "unknown method"),
        ({"datasets": ["mvtec"]}, "no methods"),
        ({"methods": ["winclip"]}, "no datasets"),
        ({"datasets": ["mvtec"], "methods": ["winclip"], "ablations": {"colour": {"values": [1]}}}, "unknown ablation"),
        (
            {"datasets": ["mvtec"], "methods": ["winclip"], "ablations": {"window_scales": {"values": ["2,x"]}}},
            "window-scale",
        ),
        (
            {"datasets": ["mvtec"], "methods": ["winclip"], "ablations": {"prompts": {"values": ["nonsense"]}}},
            "unknown prompt set",
        ),
        (
            {"datasets": ["mvtec"], "methods": ["winclip"], "ablations": {"prompts": {"methods": ["aprilgan"]}}},
            "not in the study",
        ),
        ({"datasets": ["mvtec"], "methods": ["winclip"], "calibration": {"quantile": 1.5}}, "quantile"),
        ({"datasets": ["mvtec"], "methods": ["winclip"], "calibration": {"mode": "guess"}}, "calibration mode"),
        ({"datasets": ["mvtec"], "methods": ["winclip"], "limit": 0}, "limit"),
    ],
)
def test_invalid_specs_are_explained(data, match):
    with pytest.raises(VlmadError, match=match):
        parse_study_spec(data, source="t.yaml")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UnknownNameError) as err:
        load_study_spec("no-such-preset")
    assert "quick" in err.value.hint
