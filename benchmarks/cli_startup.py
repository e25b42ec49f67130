"""How long the `vlmad` command takes to answer `--help`, `--version` and `models` (target: help < 1 s).

Usage::

    python benchmarks/cli_startup.py            # 7 repeats per command, writes benchmarks/results/cli_startup.json
    python benchmarks/cli_startup.py --smoke    # 1 repeat, prints only (a check that the script still runs)
    python benchmarks/cli_startup.py --repo /path/to/other/checkout --out before.json   # e.g. an older commit

Method: every measurement is a fresh `python -m vlmad ...` process (what a user waits for: interpreter start,
imports, help rendering), timed with ``time.perf_counter`` around ``subprocess.run``; the median of the repeats
is reported with the min and max, and the median CPU time (user + system) of the process, which a loaded
machine inflates less than the wall time. The interpreter's own start (`python -c pass`) is measured the same
way, so vlmad's share can be read off. Numbers depend on the machine and its load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _env import add_smoke_flag, environment, print_environment

REPO = Path(__file__).resolve().parents[1]
COMMANDS: list[list[str]] = [
    ["--help"],
    ["--version"],
    ["detect", "--help"],
    ["benchmark", "--help"],
    ["study", "--help"],
    ["serve", "--help"],
    ["calibrate", "--help"],
    ["train", "aprilgan", "--help"],
    ["download", "--help"],
    ["models"],
]


def time_command(args: list[str], repeat: int, repo: Path = REPO) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo / "runtime" / "src"), env.get("PYTHONPATH", "")])
    times, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(args, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if res.returncode != 0:  # e.g. a command an older checkout does not have
            return {"error": res.stderr.decode().strip().splitlines()[-1][:120]}
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "cpu_median_s": statistics.median(cpu),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    add_smoke_flag(parser)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose src/ is timed (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli_startup.json")
    opts = parser.parse_args()
    repeat = 1 if opts.smoke else opts.repeat
    load = f"{os.getloadavg()[0]:.1f} (1 min)"
    print_environment(
        "cli_startup: time to answer --help, --version and models", opts.smoke, load_average=load, repo=str(opts.repo)
    )
    rows = {"python -c pass": time_command([sys.executable, "-c", "pass"], repeat, opts.repo)}
    for args in COMMANDS:
        rows["vlmad " + " ".join(args)] = time_command([sys.executable, "-m", "vlmad", *args], repeat, opts.repo)
    width = max(map(len, rows))
    print(f"{'command':<{width}}  median s  (min - max)  CPU s, {repeat} run(s) each")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<{width}}  failed: {r['error']}")
        else:
            print(
                f"{name:<{width}}  {r['median_s']:8.3f}  ({r['min_s']:.3f} - {r['max_s']:.3f})  {r['cpu_median_s']:.3f}"
            )
    if not opts.smoke:
        record = {
            "repo": str(opts.repo),
            "environment": environment(),
            "load_avg_1min": os.getloadavg()[0],
            "results": rows,
        }
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
