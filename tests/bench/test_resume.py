"""Crash safety: SIGKILL a running benchmark after its first row, rerun it, lose nothing, duplicate nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from vlmad.bench import load_results


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, mvtec_root, crash_run, vlmad_process):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    cmd = [
        *vlmad_process,
        "benchmark",
        "--dataset",
        "mvtec",
        "--root",
        str(mvtec_root),
        "--out",
        str(out),
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--shots",
        "0,1,2",
        "--seeds",
        "0,1",
        "--quiet",
        "--no-flops",
        "--num-workers",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLMAD_CACHE_DIR": str(tmp_path / "cache")}
    total = 2 * (1 + 2 + 2)  # categories x (zero-shot once + 2 seeds x 2 few-shot counts)

    first = crash_run.kill_after_first_row(cmd, env, results)
    assert 1 <= len(first) < total, "the kill should land mid-grid"
    before = {json.loads(line)["row_key"]: json.loads(line) for line in first}

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = crash_run.lines(results)
    keys = [json.loads(line)["row_key"] for line in lines]
    assert len(keys) == len(set(keys)) == total, "no duplicate and no lost row"
    assert lines[: len(first)] == first, "finished rows are kept byte for byte"
    rows = {r["row_key"]: r for r in load_results(out)}
    assert all(rows[k] == v for k, v in before.items())
    assert all((out / r["scores_file"]).is_file() for r in rows.values())
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2
    assert run["latest"]["grid"]["already_done"] == len(first) and run["latest"]["computed"] == total - len(first)
