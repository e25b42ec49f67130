"""A study (main grid + an ablation phase, with the study's own detector factory) on a real local Ray cluster."""

from __future__ import annotations

from vlmad.bench import load_results

SPEC = """
name: ray-study
datasets: [mvtec]
methods: [winclip]
shots: [0, 1]
seeds: [0]
ablations:
  prompts: {values: [full, single]}
calibration: {mode: none}
report: {gallery: false}
"""


def test_study_phases_run_on_ray(ray_cluster, mvtec_root, tmp_path):
    import ray

    from vlmad.study import StudyOptions, load_study_spec, run_study

    spec_file = tmp_path / "ray.yaml"
    spec_file.write_text(SPEC)
    options = StudyOptions(
        out=tmp_path / "run",
        roots={"mvtec": mvtec_root},
        categories=["demo_object"],
        model=["vlmad-tiny-vit"],
        random_weights=True,
        flops=False,
        report=False,
        executor="ray",
        ray_address=ray_cluster,
    )
    out = run_study(load_study_spec(str(spec_file)), options)
    rows = load_results(out)
    # main grid: zero-shot + 1-shot seed 0; the prompts ablation's variant: zero-shot only (its baseline = main)
    assert sorted((r["method_label"], r["shots"]) for r in rows) == [
        ("winclip", 0),
        ("winclip", 1),
        ("winclip prompts=single", 0),
    ]
    assert all(r["status"] == "ok" and r["run"]["executor"] == "ray" for r in rows)
    assert ray.is_initialized(), "the study leaves a Ray instance it did not start alone"
