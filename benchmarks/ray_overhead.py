"""What the Ray executor costs on top of the local one, and what a cluster buys for the full seed grid.

Usage::

    python benchmarks/ray_overhead.py --smoke                  # seconds: 1 repeat, tiny grid, writes nothing
    python benchmarks/ray_overhead.py                          # 3 repeats -> benchmarks/results/ray_overhead.md
    python benchmarks/ray_overhead.py --from-results runs/mvtec   # simulate with a real run's per-image costs

Measured here (tiny random-init WinCLIP ``vlmad-tiny-vit`` at 64 px, CPU, one torch thread everywhere; this
machine has 2 cores, so this measures overhead, not speed-up):

* **per row**: grids of 1 + S and 1 + 2S rows (1 category, zero-shot + 1-shot x S seeds) computed by the local
  executor, by Ray actors (the default: an actor keeps its detector across rows) and by Ray tasks (a fresh worker
  state, so one model build, per row). The Ray instance is started once before the timings (its start-up is
  reported on its own). The slope between the sizes is the marginal cost of a row, the intercept the fixed cost of
  a run (worker processes, model builds); overhead per row = Ray slope - local slope. Medians of ``--repeats``
  runs, each into a fresh folder, after one untimed local warm-up run.
* **per image**: `vlmad detect` on N and 2N images, locally (``run_detection``) and through the Ray Data pipeline
  (one actor); the slope between the two sizes is the per-image cost, the intercept the per-run fixed cost.

Simulated (no cluster needed): the full seed grid, 27 categories (MVTec AD 15 + VisA 12, with their real test-set
sizes) x 2 methods x (zero-shot + shots {1,2,4} x 3 seeds) = 540 rows, each costing
``model load (once per worker and method) + n_test x ms_per_image + Ray per-row overhead``, scheduled longest row
first onto the earliest free worker (what the actor pool does with a full queue) for 1, 4 and 16 GPUs. The default
per-image costs are this run's tiny-model CPU costs (so the shape, not the absolute hours, is meaningful); pass
``--from-results RUN`` (a `vlmad benchmark` folder computed on the target GPU) or ``--ms-per-image M=MS`` for
real ones.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _env import print_environment

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}
# test images per category (MVTec AD test split; VisA 1cls split_csv test split)
MVTEC_TEST = {
    "bottle": 83,
    "cable": 150,
    "capsule": 132,
    "carpet": 117,
    "grid": 78,
    "hazelnut": 110,
    "leather": 124,
    "metal_nut": 115,
    "pill": 167,
    "screw": 160,
    "tile": 117,
    "toothbrush": 42,
    "transistor": 100,
    "wood": 79,
    "zipper": 151,
}
VISA_TEST = {
    "candle": 200,
    "capsules": 160,
    "cashew": 150,
    "chewinggum": 150,
    "fryum": 150,
    "macaroni1": 200,
    "macaroni2": 200,
    "pcb1": 200,
    "pcb2": 200,
    "pcb3": 201,
    "pcb4": 201,
    "pipe_fryum": 150,
}
SEED_SHOTS, SEED_SEEDS = (1, 2, 4), (0, 1, 2)


def _grid(root: Path, out: Path, seeds: int, **kw):
    from vlmad.bench import BenchmarkConfig, DatasetSpec, method_spec

    return BenchmarkConfig(
        out=out,
        datasets=[DatasetSpec("mvtec", root, ["demo_object"])],
        methods=[method_spec("winclip", **TINY)],
        shots=[0, 1],
        seeds=list(range(seeds)),
        batch_size=4,
        num_workers=0,
        flops=False,
        **kw,
    )


def per_row(root: Path, work: Path, seeds: int, repeats: int) -> dict:
    """Grid wall per executor at two sizes (1 + S and 1 + 2S rows; medians): the slope is the marginal cost of a
    row, the intercept the fixed cost of a run (worker start-up, model build per worker)."""
    from vlmad.bench import run_benchmark

    modes = {"local": {}, "ray actors": {"executor": "ray"}, "ray tasks": {"executor": "ray", "ray_mode": "tasks"}}
    sizes = (seeds, 2 * seeds)
    run_benchmark(_grid(root, work / "warm-up", 1))  # text-embedding cache and imports warm for every executor
    walls: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sizes} for m in modes}
    for r in range(repeats):
        for mode, kw in modes.items():
            for s in sizes:
                t0 = time.perf_counter()
                run_benchmark(_grid(root, work / f"grid-{mode.replace(' ', '-')}-{s}-{r}", s, **kw))
                walls[mode][s].append(time.perf_counter() - t0)
    a, b = (1 + sizes[0], 1 + sizes[1])
    out: dict = {"rows": [a, b], "repeats": repeats}
    for mode, by_s in walls.items():
        med = [statistics.median(by_s[s]) for s in sizes]
        slope = (med[1] - med[0]) / (b - a)
        out[mode] = {"wall_s": med, "s_per_row": slope, "fixed_s": med[0] - slope * a}
    for mode in ("ray actors", "ray tasks"):
        out[mode]["overhead_s_per_row"] = out[mode]["s_per_row"] - out["local"]["s_per_row"]
    return out


def per_image(work: Path, sizes: tuple[int, int], repeats: int) -> dict:
    """Detect on N and 2N images, local vs Ray Data: per-image slope and per-run intercept (medians)."""
    import numpy as np
    from PIL import Image

    from vlmad.distributed import detect_on_ray, detector_builder
    from vlmad.jobs import run_detection
    from vlmad.testing import random_images

    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    arr = (random_images(max(sizes), 64, seed=5).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        paths.append(folder / f"img_{i:05d}.png")
        Image.fromarray(a).save(paths[-1])
    build = detector_builder(method="winclip", batch_size=8, **TINY)
    det = build()
    det.setup("bottle")
    walls: dict[str, dict[int, list[float]]] = {"local": {n: [] for n in sizes}, "ray": {n: [] for n in sizes}}
    for r in range(repeats):
        for n in sizes:
            t0 = time.perf_counter()
            run_detection(det, paths[:n], work / f"det-local-{n}-{r}", batch_size=8)
            walls["local"][n].append(time.perf_counter() - t0)
            listing = work / f"list-{n}.txt"
            listing.write_text("\n".join(map(str, paths[:n])) + "\n")
            t0 = time.perf_counter()
            detect_on_ray(build, [str(listing)], "bottle", work / f"det-ray-{n}-{r}", batch_size=8)
            walls["ray"][n].append(time.perf_counter() - t0)
    out: dict = {"sizes": list(sizes), "repeats": repeats}
    a, b = sizes
    for mode, by_n in walls.items():
        med = {n: statistics.median(v) for n, v in by_n.items()}
        slope = (med[b] - med[a]) / (b - a)
        out[mode] = {"wall_s": med, "ms_per_image": 1000 * slope, "fixed_s": med[a] - slope * a}
    out["overhead_ms_per_image"] = out["ray"]["ms_per_image"] - out["local"]["ms_per_image"]
    return out


def seed_grid_rows(ms_per_image: dict[str, float], overhead_s: float) -> list[tuple]:
    """(method, cost_s) of every row of the full seed grid."""
    rows = []
    for method, ms in ms_per_image.items():
        for n_test in list(MVTEC_TEST.values()) + list(VISA_TEST.values()):
            for _ in range(1 + len(SEED_SHOTS) * len(SEED_SEEDS)):
                rows.append((method, n_test * ms / 1000.0 + overhead_s))
    return rows


def simulate(rows: list[tuple], load_s: dict[str, float], workers: int) -> float:
    """Makespan of longest-row-first list scheduling; a worker pays a method's model load on its first row of it."""
    heap = [(0.0, w) for w in range(workers)]
    loaded: dict[int, set[str]] = {w: set() for w in range(workers)}
    end = 0.0
    for method, cost in sorted(rows, key=lambda r: -r[1]):
        t, w = heapq.heappop(heap)
        if method not in loaded[w]:
            cost += load_s.get(method, 0.0)
            loaded[w] = {method}  # one model in memory at a time, as the actors keep it
        heapq.heappush(heap, (t + cost, w))
        end = max(end, t + cost)
    return end


def costs_from_results(run: Path) -> tuple[dict[str, float], dict[str, float]]:
    from vlmad.bench import load_results

    ms: dict[str, list[float]] = {}
    load: dict[str, list[float]] = {}
    for r in load_results(run):
        if r.get("status") == "ok" and (r.get("efficiency") or {}).get("ms_per_image"):
            ms.setdefault(r["method"], []).append(r["efficiency"]["ms_per_image"])
            load.setdefault(r["method"], []).append(r["timing"].get("model_load_s") or 0.0)
    if not ms:
        raise SystemExit(f"no ok row with ms_per_image in {run}")
    return ({m: statistics.median(v) for m, v in ms.items()}, {m: max(v) for m, v in load.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="1 repeat, tiny sizes, nothing written")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3, help="few-shot seeds of the measured grid (rows = 1 + seeds)")
    ap.add_argument("--images", type=int, default=32, help="N of the per-image measurement (and 2N)")
    ap.add_argument("--from-results", type=Path, help="a benchmark run whose per-image costs the simulation uses")
    ap.add_argument("--ms-per-image", action="append", default=[], help="METHOD=MS for the simulation")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_overhead")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.seeds, args.images = 1, 1, 4
    print_environment("ray_overhead: the Ray executor's cost over the local one", args.smoke, 1)
    import torch

    torch.set_num_threads(1)
    import ray

    from vlmad.data import make_dataset

    work = Path(tempfile.mkdtemp(prefix="vlmad-ray-bench-"))
    os.environ.setdefault("VLMAD_CACHE_DIR", str(work / "cache"))
    try:
        root = make_dataset(
            work / "mvtec", layout="mvtec", categories="demo_object", n_train=4, n_test_good=4, n_test_bad=4, size=64
        )
        t0 = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
            runtime_env={
                "env_vars": {
                    "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1",
                    "VLMAD_CACHE_DIR": os.environ["VLMAD_CACHE_DIR"],
                }
            },
        )
        startup = time.perf_counter() - t0
        rows = per_row(root, work, args.seeds, args.repeats)
        images = per_image(work, (args.images, 2 * args.images), args.repeats)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tiny_ms = max(rows["local"]["s_per_row"], 1e-3) / 8 * 1000  # 8 test images per row
    ms, load = {"winclip": tiny_ms, "aprilgan": tiny_ms}, {"winclip": 1.0, "aprilgan": 1.0}
    source = "this run's tiny-model CPU cost per image (shape only, not real hours)"
    if args.from_results:
        ms, load = costs_from_results(args.from_results)
        source = f"median ms_per_image of {args.from_results}"
    for item in args.ms_per_image:
        m, _, v = item.partition("=")
        ms[m] = float(v)
        source = "--ms-per-image"
    overhead = max(0.0, rows["ray actors"]["overhead_s_per_row"])
    grid = seed_grid_rows(ms, overhead)
    sim = {n: simulate(grid, load, n) for n in (1, 4, 16)}
    report = render(startup, rows, images, ms, load, source, len(grid), sim)
    print(report)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(report)
        args.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "ray_startup_s": startup,
                    "per_row": rows,
                    "per_image": images,
                    "simulation": {
                        "ms_per_image": ms,
                        "model_load_s": load,
                        "source": source,
                        "rows": len(grid),
                        "wall_s": sim,
                    },
                    "python": sys.version.split()[0],
                    "ray": ray.__version__,
                    "cpus": os.cpu_count(),
                },
                indent=2,
                default=str,
            )
            + "\n"
        )


def render(startup: float, rows: dict, images: dict, ms: dict, load: dict, source: str, n_rows: int, sim: dict) -> str:
    a, b = rows["rows"]
    lines = [
        "# Ray executor overhead (tiny model, CPU, 1 torch thread, 2 shared cores)",
        "",
        f"Ray local instance start-up: {startup:.1f} s (once per run; not in the numbers below).",
        "",
        f"## Per row (grids of {a} and {b} rows, median of {rows['repeats']})",
        "",
        "| executor | wall, small grid (s) | wall, large grid (s) | per row (s) | fixed per run (s) | "
        "overhead per row vs local (s) |",
        "|---|---|---|---|---|---|",
    ]
    for m in ("local", "ray actors", "ray tasks"):
        d = rows[m]
        over = d.get("overhead_s_per_row")
        lines.append(
            f"| {m} | {d['wall_s'][0]:.2f} | {d['wall_s'][1]:.2f} | {d['s_per_row']:.2f} | "
            f"{d['fixed_s']:.1f} | {'-' if over is None else f'{over:+.2f}'} |"
        )
    a, b = images["sizes"]
    lines += [
        "",
        f"## Per image (detect on {a} and {b} images, median of {images['repeats']})",
        "",
        "| executor | wall N (s) | wall 2N (s) | per image (ms) | fixed per run (s) |",
        "|---|---|---|---|---|",
    ]
    for m in ("local", "ray"):
        d = images[m]
        lines.append(
            f"| {m} | {d['wall_s'][a]:.2f} | {d['wall_s'][b]:.2f} | {d['ms_per_image']:.1f} | {d['fixed_s']:.1f} |"
        )
    lines += [
        "",
        f"Ray overhead per image: {images['overhead_ms_per_image']:+.1f} ms.",
        "",
        f"## Simulated full seed grid ({n_rows} rows)",
        "",
        f"Per-image cost: {', '.join(f'{m} {v:.1f} ms' for m, v in ms.items())} ({source}); model load "
        f"{', '.join(f'{m} {v:.1f} s' for m, v in load.items())} per worker; Ray overhead per row "
        f"{max(0.0, rows['ray actors']['overhead_s_per_row']):.2f} s.",
        "",
        "| GPUs (workers) | expected wall | speed-up vs 1 |",
        "|---|---|---|",
    ]
    for n, t in sim.items():
        lines.append(f"| {n} | {t / 3600:.2f} h ({t:.0f} s) | {sim[1] / t:.1f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
