"""Shared by the benchmark scripts: the ``--smoke`` flag and the environment block every result starts with.

A benchmark number means little without the machine it came from, so each script prints this block first (CPU,
visible cores, threads, library versions, allocator settings, commit, UTC date); the committed outputs under
``benchmarks/results/`` are these printouts.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE_HELP = "tiny model and sizes, seconds: checks the script runs (CI); its numbers mean nothing"


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(threads: int | None = None) -> dict[str, str]:
    """What the numbers depend on, as printable strings."""
    try:
        import torch

        torch_threads = str(threads or torch.get_num_threads())
        capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        torch_threads, capability = "n/a", "n/a"
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "commit": _commit(),
        "CPU": f"{cpu_model()} ({capability}), {visible} logical CPUs visible, load average {load}",
        "torch threads": torch_threads,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "open_clip": _version("open_clip_torch"),
        "numpy": _version("numpy"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "unset"),
        "VLMAD_MALLOC_TUNING": os.environ.get("VLMAD_MALLOC_TUNING", "unset (vlmad tunes glibc malloc itself)"),
    }


def print_environment(title: str, smoke: bool = False, threads: int | None = None, **extra: str) -> None:
    """The header block of a result: ``title``, SMOKE label when it applies, then :func:`environment`."""
    print(f"# {title}")
    if smoke:
        print("# SMOKE RUN (--smoke): tiny model and sizes; checks that the script works, the numbers mean nothing")
    for key, value in {**environment(threads), **extra}.items():
        print(f"#   {key}: {value}")
    print(f"#   command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    sys.stdout.flush()
