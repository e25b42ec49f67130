"""Ablation axes -> detector variants, and the phases a study plans on top of the benchmark harness."""

from __future__ import annotations

import pytest

from vlmad.bench import plan_grid
from vlmad.prompts import PROMPT_SETS, ablate
from vlmad.study import AXES, StudyOptions, load_study_spec, parse_study_spec, plan_study
from vlmad.study.axes import STAGE_SUBSET_KEY, parse_scales
from vlmad_runtime.errors import VlmadError

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}


def _by_name(variants):
    return {v.name: v for v in variants}


def test_prompt_variants_are_the_ablated_sets():
    vs = _by_name(
        AXES["prompts"].variants(
            [
                "full",
                "states-only",
                "templates-only",
                "single",
                "winclip-paper",
                {"name": "mine", "normal_states": ["{}"], "anomalous_states": ["bad {}"], "templates": ["{}"]},
            ],
            "winclip",
            TINY,
        )
    )
    assert vs["full"].is_default and vs["full"].apply(TINY) == TINY
    for mode in ("states-only", "templates-only", "single"):
        assert vs[mode].patch == {"prompt_set": ablate(PROMPT_SETS["winclip"], mode).as_dict()}
    assert vs["winclip-paper"].patch == {"prompt_set": "winclip-paper"}
    assert vs["mine"].patch["prompt_set"]["anomalous_states"] == ["bad {}"]
    april = _by_name(AXES["prompts"].variants(["single"], "aprilgan", TINY))
    assert april["single"].patch["prompt_set"]["name"] == "aprilgan:single"
    assert "default" in april and april["default"].is_default  # a baseline is always there


def test_window_scales():
    assert parse_scales("2,3+image") == ((2, 3), True) and parse_scales([2]) == ((2,), False)
    assert parse_scales("image") == ((), True)
    vs = _by_name(AXES["window_scales"].variants(["2", "3", "2,3", "2,3+image"], "winclip", TINY))
    assert vs["2,3+image"].is_default and not vs["2,3"].is_default
    assert vs["2"].patch == {"scales": [2], "use_image_scale": False}
    # the baseline is whatever the study configures
    custom = _by_name(AXES["window_scales"].variants(["2,3+image", "2"], "winclip", {**TINY, "scales": [2]}))
    assert custom["2"].is_default is False and custom["2,3+image"].is_default is False


def test_stages_each_and_all():
    vs = AXES["stages"].variants(["each", "all"], "aprilgan", TINY)  # tiny: 2 blocks -> stages (1, 2)
    assert [(v.name, v.is_default, v.patch) for v in vs] == [
        ("all", True, {}),
        ("1", False, {STAGE_SUBSET_KEY: [1]}),
        ("2", False, {STAGE_SUBSET_KEY: [2]}),
    ]
    four = AXES["stages"].variants(["each"], "aprilgan", {**TINY, "model": "vlmad-tiny-vit-4l"})
    assert [v.name for v in four] == ["default", "1", "2", "3", "4"]
    with pytest.raises(VlmadError, match="not one of the detector's stages"):
        AXES["stages"].variants([[7]], "aprilgan", TINY)


def test_resolution_and_backbone():
    vs = _by_name(AXES["resolution"].variants(["default", "1.5x", "0.75x", 64], "winclip", TINY))
    assert vs["default"].is_default and vs["96px"].patch == {"image_size": 96} and "48px" in vs
    assert list(vs) == ["default", "96px", "48px"]  # 64 px is the default: merged
    with pytest.raises(VlmadError, match="multiple of the patch size"):
        AXES["resolution"].variants([100], "winclip", TINY)
    bb = _by_name(
        AXES["backbone"].variants(["default", {"model": "vlmad-tiny-vit-4l", "name": "deeper"}], "winclip", TINY)
    )
    assert bb["deeper"].apply(TINY) == {"model": "vlmad-tiny-vit-4l", "random_weights": True}
    with pytest.raises(VlmadError, match="has no weights"):
        AXES["backbone"].variants(
            [{"model": "vlmad-tiny-vit-4l"}], "winclip", {"model": "vlmad-tiny-vit", "checkpoint": "x.safetensors"}
        )


def test_plan_phases_share_the_baseline_rows(tmp_path, mvtec_root, visa_root):
    spec = load_study_spec("quick")
    opts = StudyOptions(
        out=tmp_path, roots={"mvtec": mvtec_root, "visa": visa_root}, model=["vlmad-tiny-vit"], random_weights=True
    )
    plan = plan_study(spec, opts)
    names = [p.name for p in plan.phases]
    assert names[0] == "main grid" and "prompts: baseline" in names and "stages=1" in names
    main_keys = {p.key for p in plan_grid(plan.phases[0].config)[0]}
    for phase in plan.phases[1:]:
        keys = {p.key for p in plan_grid(phase.config)[0]}
        if phase.variant is None:
            assert keys <= main_keys, f"{phase.name}: the baseline is the main grid's rows"
        else:
            assert not keys & main_keys
            assert phase.config.tags == {"ablation": phase.axis, "variant": phase.variant}
            for m in phase.config.methods:
                assert m["study"]["axis"] == phase.axis and m["label"].endswith(f"{phase.axis}={phase.variant}")
    stage_phase = next(p for p in plan.phases if p.name == "stages=1")
    assert [m["method"] for m in stage_phase.config.methods] == ["aprilgan"]  # stages: APRIL-GAN only


def test_options_and_errors(tmp_path, mvtec_root):
    spec = parse_study_spec({"datasets": ["mvtec", "visa"], "methods": ["winclip", "aprilgan"]})
    with pytest.raises(VlmadError, match="--root visa=PATH"):
        plan_study(spec, StudyOptions(out=tmp_path, roots={"mvtec": mvtec_root}, random_weights=True))
    with pytest.raises(VlmadError, match="needs its heads file"):
        plan_study(
            spec, StudyOptions(out=tmp_path, roots={"mvtec": mvtec_root}, datasets=["mvtec"], random_weights=True)
        )
    plan = plan_study(
        spec,
        StudyOptions(
            out=tmp_path,
            roots={"mvtec": mvtec_root},
            datasets=["mvtec"],
            random_weights=True,
            sets=["aprilgan.allow_untrained=true"],
            categories=["demo_object"],
            shots=[0, 2],
            limit=4,
        ),
    )
    cfg = plan.phases[0].config
    assert cfg.shots == [0, 2] and cfg.limit == 4 and cfg.datasets[0].categories == ["demo_object"]
    assert cfg.methods[1]["kwargs"] == {"random_weights": True, "allow_untrained": True}
