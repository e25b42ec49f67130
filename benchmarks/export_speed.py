"""Exported bundles vs torch on CPU: images/s, ratio to torch fp32, peak RSS, bundle size, first-request latency.

Usage::

    python benchmarks/export_speed.py --smoke                 # tiny configs, seconds (CI-sized check)
    python benchmarks/export_speed.py                         # the issue-11 table (minutes to an hour on 2 cores)
    python benchmarks/export_speed.py --configs winclip-0-b1,winclip-2-b8 --repeats 3 --threads 4

Rows: WinCLIP ViT-B-16-plus-240 at 240 (zero-shot and 2-shot, batch 1 and 8) and APRIL-GAN ViT-L-14-336 at 518
(zero-shot, batch 1), random init (speed does not depend on weight values). Engines: torch fp32 (vlmad's fast
path, ``detector.predict`` on a preprocessed batch), onnxruntime fp32, OpenVINO fp32 and OpenVINO int8 (NNCF,
transformer preset, calibrated on 8 synthetic images) bundles written by :func:`vlmad.export.build.export_bundle`.

Each engine runs in its own subprocess, so peak RSS (psutil, sampled every 5 ms, whole process) and first-request
latency (process-internal: building the detector / loading and compiling the bundle, plus the first batch) are
not shared with the others. Throughput: median over ``--repeats`` timed batches after one warm-up batch.
Gap vs torch fp32 (max-abs of maps and scores, Spearman rank correlation of maps) is what the export measured on
its verification images and recorded in the manifest. Results: benchmarks/results/export_speed*.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _env import print_environment

CONFIGS = {  # name: (method, arch, image size or None, shots, batch)
    "winclip-0-b1": ("winclip", "ViT-B-16-plus-240", None, 0, 1),
    "winclip-0-b8": ("winclip", "ViT-B-16-plus-240", None, 0, 8),
    "winclip-2-b1": ("winclip", "ViT-B-16-plus-240", None, 2, 1),
    "winclip-2-b8": ("winclip", "ViT-B-16-plus-240", None, 2, 8),
    "aprilgan-0-b1": ("aprilgan", "ViT-L-14-336", 518, 0, 1),
}
SMOKE = {
    "winclip-0-b1": ("winclip", "vlmad-tiny-vit", None, 0, 1),
    "winclip-2-b8": ("winclip", "vlmad-tiny-vit", None, 2, 8),
    "aprilgan-0-b1": ("aprilgan", "vlmad-tiny-vit-4l", None, 0, 1),
}
ENGINES = (
    ("torch", None, None),
    ("onnxruntime", "onnx", "fp32"),
    ("openvino", "openvino", "fp32"),
    ("openvino-int8", "openvino", "int8"),
)
RESULTS = Path(__file__).parent / "results"


def detector(method: str, arch: str, size: int | None, shots: int):
    from vlmad.methods import create_detector
    from vlmad.testing import random_images

    kwargs = {"allow_untrained": True} if method == "aprilgan" else {}
    if size:
        kwargs["image_size"] = size
    det = create_detector(method, model=arch, random_weights=True, use_cache=False, **kwargs)
    det.setup("bottle")
    if shots:
        det.fit(det.backbone.preprocess_tensor(random_images(shots, det.image_size, seed=5)))
    return det


def peak_rss_during(fn):
    """Run ``fn`` while sampling this process's RSS; returns (fn's result, peak RSS in MiB)."""
    import psutil

    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, max(peak[0], proc.memory_info().rss) / 2**20


def worker(args: argparse.Namespace) -> None:
    """One engine in this process: prints a JSON line with first-request latency, images/s and peak RSS.

    Bundle engines import neither torch nor vlmad (as on a line PC), so their RSS is the runtime's alone; the time
    to first result starts before the model is built / the bundle is loaded (after the interpreter starts)."""
    import numpy as np

    method, arch, size, shots, batch = json.loads(args.config)
    rng = np.random.default_rng(7)

    def measure():
        t0 = time.perf_counter()
        if args.bundle:
            from vlmad_runtime.bundle import load_bundle

            b = load_bundle(args.bundle, threads=args.threads, batch_size=batch)
            pre = b.manifest["preprocessing"]  # the graph alone is timed, as for torch (preprocessing excluded)
            mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
            x = ((rng.random((batch, 3, b.image_size, b.image_size), np.float32) - mean) / std).astype(np.float32)
            run = lambda: b.run(x)  # noqa: E731
        else:
            import torch

            torch.set_num_threads(args.threads)
            det = detector(method, arch, size, shots)
            side = det.image_size
            x = det.backbone.preprocess_tensor(torch.from_numpy(rng.random((batch, 3, side, side), np.float32)))
            run = lambda: det.predict(x)  # noqa: E731
        run()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return first, batch / statistics.median(times)

    (first, ips), rss = peak_rss_during(measure)
    print(json.dumps({"first_request_s": first, "images_per_s": ips, "peak_rss_mib": rss}))


def export_all(name: str, cfg: tuple, root: Path) -> dict[str, dict]:
    """Bundles of one config for every exported engine: {engine: {path, size_mib, export_s, verification}}."""
    import torch

    from vlmad.export.build import ExportRequest, export_bundle
    from vlmad.testing import random_images

    method, arch, size, shots, _ = cfg
    det = detector(method, arch, size, shots)
    calib = det.backbone.preprocess_tensor(random_images(8, det.image_size, seed=3))
    out: dict[str, dict] = {}
    for engine, fmt, precision in ENGINES[1:]:
        folder = root / f"{name}-{engine}"
        t = time.perf_counter()
        with torch.no_grad():
            m = export_bundle(
                det,
                ExportRequest(
                    out=folder,
                    format=fmt,
                    precision=precision,
                    verify=calib[:4],
                    calibration=calib,
                    class_name="bottle",
                ),
            )
        out[engine] = {
            "path": str(folder),
            "export_s": time.perf_counter() - t,
            "verification": m["verification"],
            "size_mib": sum(p.stat().st_size for p in folder.iterdir()) / 2**20,
        }
        print(
            f"  exported {name} {engine}: {out[engine]['size_mib']:.0f} MiB in {out[engine]['export_s']:.0f} s",
            file=sys.stderr,
        )
    return out


def run_engine(cfg: tuple, bundle: str | None, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--config",
        json.dumps(cfg),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ] + (["--bundle", bundle] if bundle else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (
        "| config | engine | images/s | x torch fp32 | first request s | peak RSS MiB | bundle MiB | "
        "max-abs map | max-abs score | map rank corr |\n|" + "---|" * 10
    )
    lines = [head]
    for r in rows:
        ver = r.get("verification") or {}
        gap = (
            f"{ver['max_abs_map']:.1e} | {ver['max_abs_score']:.1e} | {ver['map_rank_correlation']:.5f}"
            if ver
            else "- | - | -"
        )
        lines.append(
            f"| {r['config']} | {r['engine']} | {r['images_per_s']:.2f} | {r['ratio']:.2f} | "
            f"{r['first_request_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r.get('size_mib', 0):.0f} | {gap} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configs (a check that the benchmark runs)")
    ap.add_argument("--configs", default=None, help="comma-separated subset of the config names")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print_environment("export_speed: exported bundles vs the torch detector", args.smoke, args.threads)
    configs = SMOKE if args.smoke else CONFIGS
    names = args.configs.split(",") if args.configs else list(configs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlmad-export-bench-") as tmp:
        exported: dict[tuple, dict] = {}  # configs differing only in batch size share their bundles
        for name in names:
            cfg = configs[name]
            if tuple(cfg[:4]) not in exported:
                exported[tuple(cfg[:4])] = export_all(name, cfg, Path(tmp))
            bundles = exported[tuple(cfg[:4])]
            base = None
            for engine, _, _ in ENGINES:
                info = bundles.get(engine, {})
                r = run_engine(cfg, info.get("path"), args)
                base = base or r["images_per_s"]
                rows.append(
                    {
                        "config": name,
                        "engine": engine,
                        "ratio": r["images_per_s"] / base,
                        **r,
                        **{k: v for k, v in info.items() if k != "path"},
                    }
                )
                save(rows, args, configs, names)
                print(
                    f"{name:14s} {engine:14s} {r['images_per_s']:8.2f} img/s  x{rows[-1]['ratio']:.2f}", file=sys.stderr
                )
    print(table(rows))


def save(rows: list[dict], args: argparse.Namespace, configs: dict, names: list[str]) -> None:
    """Write the table so far (after every row: a long run stopped midway keeps what it measured)."""
    import platform

    import psutil

    stem = "export_speed_smoke" if args.smoke else "export_speed"
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "cpu": platform.processor() or platform.machine(),
        "cores": psutil.cpu_count(),
        "threads": args.threads,
        "repeats": args.repeats,
        "configs": {n: configs[n] for n in names},
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"{json.dumps(meta)}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
