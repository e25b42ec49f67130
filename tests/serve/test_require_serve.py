"""VLMAD_REQUIRE_SERVE=1 (set by .ci/run) turns "serve extra not installed" from a skip into a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _pytest_without_fastapi(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    """Run the service API tests in a fresh interpreter in which ``import fastapi`` fails as for a module that
    is not installed (a shadowing module raising ModuleNotFoundError, first on the path)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "fastapi.py").write_text('raise ModuleNotFoundError("No module named \'fastapi\'", name="fastapi")\n')
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, VLMAD_REQUIRE_SERVE=require)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_api.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS.parent.parent,
        timeout=300,
    )


def test_missing_serve_extra_skips_by_default_and_fails_when_required(tmp_path):
    lenient = _pytest_without_fastapi(tmp_path, "0")
    assert lenient.returncode == 5 and "1 skipped" in lenient.stdout, lenient.stdout + lenient.stderr
    strict = _pytest_without_fastapi(tmp_path, "1")
    out = strict.stdout + strict.stderr
    assert strict.returncode not in (0, 5), out
    assert "VLMAD_REQUIRE_SERVE=1" in out and "missing: fastapi" in out and "skipped" not in strict.stdout
