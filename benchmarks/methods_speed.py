"""The three methods side by side: ms/image and peak memory of a zero-shot ``predict`` at batch 1.

Usage::

    python benchmarks/methods_speed.py                  # the three default set-ups, median of 3 repeats
    python benchmarks/methods_speed.py --repeat 5 --threads 2
    python benchmarks/methods_speed.py --smoke          # tiny models: checks the script runs (CI)

What is measured (random-init weights: the cost does not depend on the weight values; no download needed), each
method as its reference runs it:

* WinCLIP: ViT-B-16-plus-240 at 240 px (full image + sliding windows of scales 2 and 3, harmonic aggregation);
* APRIL-GAN: ViT-L-14-336 at 518 px, stages 6/12/18/24, untrained (seeded) projection heads;
* AnomalyCLIP: ViT-L-14-336 at 518 px, seeded (untrained) prompts, DPAM from block 6, Gaussian smoothing.

All zero-shot, batch 1, on already preprocessed tensors (the same random image for every repeat). Text embeddings
are computed once in ``setup`` (reported, not part of the per-image time). Timing: ``time.perf_counter`` around
each ``predict`` after one warm-up call; the median of ``--repeat`` calls is the number, min and max are shown.

Memory: each method runs in its **own subprocess**, so one method's model and caches do not count against the
next: ``peak RSS`` is the process's resident-set high-water mark (``getrusage``) after loading and predicting
(model weights included: what an inspection PC needs), ``+predict`` is the resident size sampled every 5 ms
during the timed calls minus the size before them (the activations). Ratios are to WinCLIP in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _env import add_smoke_flag, print_environment

#: method -> (model, image size); the references' defaults
SETUPS = {
    "winclip": ("ViT-B-16-plus-240", 240),
    "aprilgan": ("ViT-L-14-336", 518),
    "anomalyclip": ("ViT-L-14-336", 518),
}
SMOKE_MODEL = "vlmad-tiny-vit-4l"
#: options that let a method run without trained parts (seeded, recorded in its info())
UNTRAINED = {"aprilgan": {"allow_untrained": True}, "anomalyclip": {"allow_untrained": True}}


def sample_rss(stop: threading.Event, peak: list[int]) -> None:
    import psutil

    proc = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)


def measure_one(method: str, model: str, size: int, repeat: int, threads: int | None) -> dict:
    """Load, set up and time one method in this process; returns the row as a dict."""
    import psutil
    import torch

    from vlmad import create_detector
    from vlmad.testing import random_images

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    det = create_detector(
        method, model=model, image_size=size, random_weights=True, use_cache=False, **UNTRAINED.get(method, {})
    )
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.setup("bottle")
    setup_s = time.perf_counter() - t0
    x = det.backbone.preprocess_tensor(random_images(1, det.image_size, seed=1))
    det.predict(x)  # warm-up: one-off initialisation is not part of the per-image time
    before = psutil.Process().memory_info().rss
    peak, stop = [before], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(stop, peak), daemon=True)
    sampler.start()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pred = det.predict(x)
        times.append(1000 * (time.perf_counter() - t0))
    stop.set()
    sampler.join()
    assert pred.anomaly_maps.shape == (1, det.image_size, det.image_size)
    info = det.info()
    return {
        "method": method,
        "model": info.model,
        "image_size": info.image_size,
        "load_s": load_s,
        "setup_s": setup_s,
        "ms": times,
        "median_ms": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predict_delta_mb": (peak[0] - before) / 2**20,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(method: str, model: str, size: int, args) -> dict:
    """:func:`measure_one` in a fresh interpreter (clean memory high-water mark); its JSON is the last line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--model", model, "--size", str(size)]
    cmd += ["--repeat", str(args.repeat)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if r["method"] == "winclip"), rows[0])
    print(
        f"\n{'method':<12} {'model @ px':<24} {'ms/image':>9} {'min-max ms':>15} {'x WinCLIP':>9} "
        f"{'peak RSS MB':>11} {'+predict MB':>11} {'setup s':>8}"
    )
    for r in rows:
        spread = f"{min(r['ms']):.0f}-{max(r['ms']):.0f}"
        print(
            f"{r['method']:<12} {r['model'] + ' @ ' + str(r['image_size']):<24} {r['median_ms']:9.0f} "
            f"{spread:>15} {r['median_ms'] / base['median_ms']:9.2f} {r['peak_rss_mb']:11.0f} "
            f"{r['predict_delta_mb']:11.0f} {r['setup_s']:8.1f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed predict calls per method (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--methods", default=",".join(SETUPS), help="comma-separated subset of " + ", ".join(SETUPS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    add_smoke_flag(ap)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLMAD_CACHE_DIR", tempfile.mkdtemp(prefix="vlmad-bench-"))
    if args.child:
        print(json.dumps(measure_one(args.child, args.model, args.size, args.repeat, args.threads)))
        return 0
    if args.smoke:
        args.repeat = 1
    print_environment(
        "methods_speed: WinCLIP vs APRIL-GAN vs AnomalyCLIP, zero-shot predict at batch 1", args.smoke, args.threads
    )
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in SETUPS:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(SETUPS)}")
        model, size = (SMOKE_MODEL, 64) if args.smoke else SETUPS[method]
        # smoke: in this process (one interpreter start; its memory numbers mean nothing anyway)
        row = measure_one(method, model, size, 1, args.threads) if args.smoke else run_child(method, model, size, args)
        rows.append(row)
        print(
            f"  {method:<12} {row['model']} @ {row['image_size']}: load {row['load_s']:.1f} s, setup "
            f"{row['setup_s']:.1f} s, predict ms {', '.join(f'{t:.0f}' for t in row['ms'])}",
            flush=True,
        )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
