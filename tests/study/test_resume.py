"""Crash safety of a study: SIGKILL it after its first row, rerun: nothing lost, nothing duplicated; run a third time:
nothing recomputed."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from vlmad.bench import load_results

SPEC = """
name: resume-test
datasets: [mvtec]
methods: [winclip]
shots: [0, 1]
seeds: [0, 1]
ablations:
  prompts: {values: [full, single]}
calibration: {mode: normal-quantile, quantile: 0.9, max_images: 4}
report: {gallery: false}
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_loses_nothing_and_rerun_computes_nothing(tmp_path, mvtec_root, crash_run, vlmad_process):
    spec = tmp_path / "resume.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    results = out / "results.jsonl"
    cmd = [
        *vlmad_process,
        "study",
        str(spec),
        "--root",
        f"mvtec={mvtec_root}",
        "--out",
        str(out),
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--quiet",
        "--no-flops",
        "--num-workers",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLMAD_CACHE_DIR": str(tmp_path / "cache")}
    total = 2 * (1 + 2 * 1) + 2  # classes x (zero-shot + 2 seeds x 1-shot) + the single-prompt variant (zero-shot)

    first = crash_run.kill_after_first_row(cmd, env, results)
    assert 1 <= len(first) < total, "the kill should land mid-study"
    assert not (out / "report.html").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = crash_run.lines(results)
    keys = [json.loads(line)["row_key"] for line in lines]
    assert len(keys) == len(set(keys)) == total, "no duplicate and no lost row"
    assert lines[: len(first)] == first, "finished rows are kept byte for byte"
    rows = load_results(out)
    assert all(r["status"] == "ok" and (out / r["scores_file"]).is_file() for r in rows)
    assert {(r["tags"] or {}).get("variant") for r in rows} == {None, "single"}
    assert len(list((out / "deploy").glob("*/*/*.json"))) == 2 * 2  # classes x shots
    assert (out / "report.html").is_file()
    study = json.loads((out / "study.json").read_text())
    assert len(study["invocations"]) == 2 and "finished" not in study["invocations"][0]
    assert study["invocations"][1]["computed"] == total - len(first)

    snapshot = {
        p: p.read_bytes()
        for p in [
            results,
            out / "run.json",
            *sorted((out / "deploy").glob("**/*.json")),
            *sorted((out / "calibration").glob("*.csv")),
        ]
    }
    again = subprocess.run([*cmd, "--no-report"], env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert {p: p.read_bytes() for p in snapshot} == snapshot, "a finished study rewrites no result"
    study = json.loads((out / "study.json").read_text())
    assert study["invocations"][-1]["computed"] == 0 and study["invocations"][-1]["phases_run"] == []
