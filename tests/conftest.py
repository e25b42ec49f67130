"""Shared test set-up: offline hub, a private cache dir, tiny open_clip configs, and the parity oracle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# hub calls must fail fast on build machines (no network); set before open_clip/huggingface_hub import
os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: test packages of the harness, study and report: many tiny-model runs that embed the same prompts again and again;
#: they share one text-embedding cache (cache behaviour itself is tested in tests/backbones) and run one torch thread
HARNESS_PACKAGES = {"bench", "study", "report"}


def _in_harness_package(request: pytest.FixtureRequest) -> bool:
    rel = Path(str(request.node.path)).resolve().relative_to(Path(__file__).resolve().parent)
    return len(rel.parts) > 1 and rel.parts[0] in HARNESS_PACKAGES


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Every test gets its own text-embedding cache so results never depend on test order (the harness packages
    share one instead, see HARNESS_PACKAGES)."""
    if _in_harness_package(request):
        request.getfixturevalue("shared_text_cache")
        return
    monkeypatch.setenv("VLMAD_CACHE_DIR", str(tmp_path_factory.mktemp("vlmad-cache")))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request):
    """2 shared cores: one intra-op thread for the harness packages' tiny models; restored after each module, so
    the real-architecture tests elsewhere keep all threads."""
    if not _in_harness_package(request):
        yield
        return
    from vlmad.testing import single_torch_thread

    with single_torch_thread():
        yield


_SHARED_CACHE: Path | None = None


@pytest.fixture
def shared_text_cache(tmp_path_factory, monkeypatch) -> Path:
    """One text-embedding cache for every test that asks (the tiny models embed the same prompts again and again);
    the default of the harness packages (HARNESS_PACKAGES)."""
    global _SHARED_CACHE
    if _SHARED_CACHE is None:
        _SHARED_CACHE = tmp_path_factory.mktemp("vlmad-cache-shared")
    monkeypatch.setenv("VLMAD_CACHE_DIR", str(_SHARED_CACHE))
    return _SHARED_CACHE


class CrashRun:
    """Crash-safety tests of the append-only runs (benchmark, study): start a CLI, SIGKILL it once its first result
    row is on disk, then inspect what survived."""

    @staticmethod
    def lines(path: Path) -> list[bytes]:
        """Non-empty lines of a JSONL file (none if it does not exist yet)."""
        if not path.exists():
            return []
        return [line for line in path.read_bytes().split(b"\n") if line.strip()]

    def kill_after_first_row(
        self, cmd: list[str], env: dict[str, str], results: Path, timeout: float = 120
    ) -> list[bytes]:
        """Runs ``cmd``, SIGKILLs it as soon as ``results`` has a row; returns the rows that survived."""
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.lines(results):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, f"no row written within {timeout:.0f} s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return self.lines(results)


@pytest.fixture
def crash_run() -> CrashRun:
    return CrashRun()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Factory: a generated dataset per (layout, categories, counts, size), written once per session (read-only
    for the tests; a test that damages files copies it first)."""
    from vlmad.data import make_dataset

    made: dict[tuple, Path] = {}

    def make(
        layout: str, categories: str, n_train: int = 4, n_test_good: int = 3, n_test_bad: int = 3, size: int = 64
    ) -> Path:
        key = (layout, categories, n_train, n_test_good, n_test_bad, size)
        if key not in made:
            folder = tmp_path_factory.mktemp("data") / layout
            made[key] = make_dataset(folder, layout, categories, n_train, n_test_good, n_test_bad, size=size)
        return made[key]

    return make


@pytest.fixture(scope="session")
def mvtec_root(small_dataset) -> Path:
    """A small generated MVTec-layout dataset (2 categories, masks)."""
    return small_dataset("mvtec", "demo_texture,demo_object")


@pytest.fixture(scope="session")
def visa_root(small_dataset) -> Path:
    """A small generated VisA-layout dataset (raw layout with split_csv, 2 categories, masks)."""
    return small_dataset("visa", "demo_grid,demo_object")


#: `python -m vlmad` in a child process (crash and resume tests kill it; pass an env with HF_HUB_OFFLINE)
VLMAD_PROCESS = [sys.executable, "-m", "vlmad"]


@pytest.fixture(scope="session")
def vlmad_process() -> list[str]:
    return list(VLMAD_PROCESS)


@pytest.fixture(scope="session")
def cli():
    """``cli([args])``: run the `vlmad` app in-process (every command registered; arguments str()-ed), returning
    the click Result (exit_code, output, exception)."""
    from typer.testing import CliRunner

    import vlmad.cli.commands  # noqa: F401  (registers every command)
    from vlmad.cli import app

    def invoke(args: list[object]):
        return CliRunner().invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def oracle_python() -> str:
    """Python of the anomalib 2.7.0 environment (see Makefile `oracle-env`).

    Under `make test`/CI the variable is always set and a missing oracle is a failure, not a skip
    (VLMAD_REQUIRE_ORACLE=1).
    """
    path = os.environ.get("VLMAD_ORACLE_PYTHON")
    if path and Path(path).exists():
        return path
    if os.environ.get("VLMAD_REQUIRE_ORACLE") == "1":
        pytest.fail(f"VLMAD_REQUIRE_ORACLE=1 but the oracle python {path!r} does not exist; run `make oracle-env`")
    pytest.skip("anomalib oracle environment not configured (set VLMAD_ORACLE_PYTHON or use `make test`)")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (this process is its head and first driver; CPU only, 2 CPUs, small object store),
    shared by every Ray test. Yields the GCS address other drivers join with ``--ray-address``. Without the
    ``ray`` package the tests skip, except under VLMAD_REQUIRE_RAY=1 (CI: `make test` installs it) where they fail."""
    try:
        import ray
    except ImportError:
        if os.environ.get("VLMAD_REQUIRE_RAY") == "1":
            pytest.fail("VLMAD_REQUIRE_RAY=1 but ray is not installed; run `make setup` (installs vlmad[ray])")
        pytest.skip("ray not installed (pip install 'vlmad[ray]')")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_task_events_report_interval_ms", "100")  # the state API sees a running row sooner
    ctx = ray.init(
        num_cpus=2,
        include_dashboard=True,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level="warning",
    )
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


def pytest_report_header(config):
    return f"oracle python: {os.environ.get('VLMAD_ORACLE_PYTHON') or shutil.which('none') or 'not set'}"


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Factory: a discriminative random-weights safetensors checkpoint per (arch, seed), made once per session."""
    from vlmad.testing import discriminative_state_dict, save_state_dict

    made: dict[tuple[str, int], Path] = {}
    root = tmp_path_factory.mktemp("weights")

    def make(arch: str = "vlmad-tiny-vit", seed: int = 0) -> Path:
        if (arch, seed) not in made:
            made[(arch, seed)] = save_state_dict(
                discriminative_state_dict(arch, seed=seed), root / f"{arch}-{seed}.safetensors"
            )
        return made[(arch, seed)]

    return make


@pytest.fixture(scope="session")
def tiny_backbone(weights_file):
    from vlmad.backbones import ClipBackbone

    return ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")))


ORACLE_SCRIPT = Path(__file__).parent / "oracle" / "anomalib_winclip.py"


@pytest.fixture(scope="session")
def anomalib_winclip(oracle_python):
    """Callable running anomalib 2.7.0's WinClipModel (oracle env, subprocess) on arrays; returns its outputs."""
    from vlmad.backbones.loading import CONFIG_DIR

    def run(
        workdir: Path,
        arch: str,
        weights: Path,
        images: np.ndarray,
        class_name: str,
        refs: np.ndarray | None = None,
        shots: tuple[int, ...] = (0,),
        scales: str = "2,3",
        timeout: float = 1800,
    ) -> dict[str, np.ndarray]:
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(workdir / "images.npy", np.asarray(images, dtype=np.float32))
        cmd = [
            oracle_python,
            str(ORACLE_SCRIPT),
            "--arch",
            arch,
            "--config-dir",
            str(CONFIG_DIR),
            "--weights",
            str(weights),
            "--images",
            str(workdir / "images.npy"),
            "--class-name",
            class_name,
            "--scales",
            scales,
            "--shots",
            ",".join(map(str, shots)),
            "--out",
            str(workdir / "oracle.npz"),
        ]
        if refs is not None:
            np.save(workdir / "refs.npy", np.asarray(refs, dtype=np.float32))
            cmd += ["--refs", str(workdir / "refs.npy")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"oracle failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with np.load(workdir / "oracle.npz") as data:
            return {k: data[k] for k in data.files}

    return run
