"""The Ray executor on a real local Ray cluster (started by the `ray_cluster` fixture): the same rows as the local
executor, no row lost or duplicated when a worker process is killed (found through Ray's state API) or when the
driver is SIGKILLed and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vlmad.bench import load_results, run_benchmark
from vlmad_runtime.errors import VlmadError


def _rows(out: Path) -> dict[str, dict]:
    return {r["row_key"]: r for r in load_results(out)}


def _keys_in_file(out: Path) -> list[str]:
    lines = [line for line in (out / "results.jsonl").read_bytes().split(b"\n") if line.strip()]
    return [json.loads(line)["row_key"] for line in lines]


def test_ray_rows_equal_local_rows_and_resume_across_executors(ray_cluster, mvtec_root, make_config, tmp_path):
    grid = {"shots": [0, 1], "seeds": [0, 1]}
    local = run_benchmark(make_config(mvtec_root, out=tmp_path / "local", **grid))
    on_ray = run_benchmark(
        make_config(mvtec_root, out=tmp_path / "ray", executor="ray", ray_address=ray_cluster, **grid)
    )
    a, b = _rows(local), _rows(on_ray)
    assert len(a) == 2 * (1 + 2) and a.keys() == b.keys()
    for key, row in a.items():
        other = b[key]
        assert row["status"] == other["status"] == "ok"
        assert row["references"] == other["references"] and row["n_images"] == other["n_images"]
        assert row["metrics"].keys() == other["metrics"].keys()
        for name, value in row["metrics"].items():
            assert other["metrics"][name] == pytest.approx(value, abs=1e-9), (key, name)
        assert (local / row["scores_file"]).read_text() == (on_ray / other["scores_file"]).read_text()
    # resume rules do not depend on the executor: a local rerun of the Ray folder computes nothing
    again = run_benchmark(make_config(mvtec_root, out=on_ray, **grid))
    assert json.loads((again / "run.json").read_text())["latest"]["computed"] == 0
    assert len(_keys_in_file(on_ray)) == len(a)


def test_unknown_executor_is_refused_before_anything_is_written(mvtec_root, make_config, tmp_path):
    with pytest.raises(VlmadError, match="--executor"):
        run_benchmark(make_config(mvtec_root, out=tmp_path / "x", executor="slurm"))
    assert not (tmp_path / "x" / "results.jsonl").exists()


def _kill_a_row_worker(address: str, timeout: float = 120) -> int:
    """SIGKILL the process of a live RowActor while Ray's state API shows it computing a row; returns its pid."""
    from ray.util.state import list_actors, list_tasks

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {
            a.actor_id: a.pid
            for a in list_actors(
                address=address,
                filters=[("class_name", "=", "RowActor"), ("state", "=", "ALIVE")],
                raise_on_missing_output=False,
            )
        }
        running = list_tasks(
            address=address,
            filters=[("func_or_class_name", "=", "RowActor.compute"), ("state", "=", "RUNNING")],
            raise_on_missing_output=False,
        )
        pids = [alive[t.actor_id] for t in running if t.actor_id in alive and alive[t.actor_id]]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.1)
    raise AssertionError("no row was running on a Ray worker")


def _run_in_thread(config) -> tuple[threading.Thread, list]:
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(run_benchmark(config))
        except BaseException as err:  # surfaced by the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("retries", [2, 0])
def test_killed_worker_loses_and_duplicates_no_row(ray_cluster, mvtec_root, make_config, tmp_path, retries):
    out = tmp_path / "run"
    config = make_config(
        mvtec_root,
        out=out,
        shots=[0, 1],
        seeds=[0, 1],
        categories=["demo_object"],
        executor="ray",
        ray_address=ray_cluster,
        row_retries=retries,
    )
    thread, outcome = _run_in_thread(config)
    killed = _kill_a_row_worker(ray_cluster)
    thread.join(timeout=240)
    assert not thread.is_alive() and outcome and not isinstance(outcome[0], BaseException), outcome
    keys = _keys_in_file(out)
    rows = _rows(out)
    assert len(keys) == len(set(keys)) == 3, "every row written exactly once"
    status = sorted(r["status"] for r in rows.values())
    if retries:
        assert status == ["ok"] * 3, f"the row of the killed worker {killed} was recomputed"
        assert sorted(r["run"]["attempt"] for r in rows.values()) == [1, 1, 2], "exactly one row was retried"
    else:
        failed = [r for r in rows.values() if r["status"] == "error"]
        assert len(failed) == 1 and "died" in failed[0]["reason"], rows
        # --retry-failed recomputes exactly that row
        run_benchmark(
            make_config(
                mvtec_root,
                out=out,
                shots=[0, 1],
                seeds=[0, 1],
                categories=["demo_object"],
                executor="ray",
                ray_address=ray_cluster,
                retry_failed=True,
            )
        )
        assert sorted(r["status"] for r in _rows(out).values()) == ["ok"] * 3
        assert len(_keys_in_file(out)) == 4


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_driver_sigkill_then_rerun_resumes(ray_cluster, mvtec_root, tmp_path, crash_run, vlmad_process):
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
        "0,1",
        "--seeds",
        "0,1",
        "--quiet",
        "--no-flops",
        "--num-workers",
        "0",
        "--executor",
        "ray",
        "--ray-address",
        ray_cluster,
        "--cpus-per-row",
        "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    total = 2 * (1 + 2)
    first = crash_run.kill_after_first_row(cmd, env, results, timeout=180)
    assert 1 <= len(first) < total, "the kill should land mid-grid"
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = crash_run.lines(results)
    keys = [json.loads(line)["row_key"] for line in lines]
    assert len(keys) == len(set(keys)) == total, "no duplicate and no lost row"
    assert lines[: len(first)] == first, "finished rows are kept byte for byte"
    assert all((out / r["scores_file"]).is_file() for r in load_results(out))
    run = json.loads((out / "run.json").read_text())
    assert run["latest"]["grid"]["already_done"] == len(first) and run["latest"]["computed"] == total - len(first)
