"""Every script in benchmarks/ runs in its ``--smoke`` mode (tiny model, small sizes): a broken benchmark fails CI.

Scripts are found by listing the folder, so a new benchmark without a working ``--smoke`` fails here too. Helper
modules start with an underscore. The smoke numbers mean nothing; what is checked is that each script runs to the
end (exit status 0) and prints its environment header, labelled as a smoke run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
#: scripts that compare against the anomalib 2.7.0 oracle environment and cannot run without it
NEEDS_ORACLE = {"winclip_vs_anomalib.py"}


def test_the_folder_has_benchmarks():
    assert {"winclip_vs_anomalib.py", "aprilgan_speed.py", "metrics_speed.py", "serve_load.py"} <= {
        p.name for p in SCRIPTS
    }


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_smoke_mode_runs(script: Path, request, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VLMAD_CACHE_DIR=str(tmp_path / "cache"))
    src = [str(BENCHMARKS.parent / "src"), str(BENCHMARKS.parent / "runtime" / "src")]
    env["PYTHONPATH"] = os.pathsep.join(src + [env.get("PYTHONPATH", "")])
    if script.name in NEEDS_ORACLE:
        env["VLMAD_ORACLE_PYTHON"] = request.getfixturevalue("oracle_python")  # skip / fail as the parity tests
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script.name} --smoke exited {proc.returncode}:\n{out[-4000:]}"
    assert "SMOKE RUN" in proc.stdout and "torch threads:" in proc.stdout and "CPU:" in proc.stdout, out[-2000:]
