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
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _env import environment, print_environment

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
#: bumped when the export settings change, so bundles cached with ``--cache`` are rebuilt
EXPORT_REV = 1


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


def _open_engine(cfg: tuple, bundle: str | None, threads: int, rng):
    """The engine's ``run()`` on one fixed random batch (preprocessing excluded: the graph alone is timed)."""
    import numpy as np

    method, arch, size, shots, batch = cfg
    if bundle:
        from vlmad_runtime.bundle import load_bundle

        b = load_bundle(bundle, threads=threads, batch_size=batch)
        pre = b.manifest["preprocessing"]
        mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
        x = ((rng.random((batch, 3, b.image_size, b.image_size), np.float32) - mean) / std).astype(np.float32)
        return lambda: b.run(x)
    import torch

    torch.set_num_threads(threads)
    det = detector(method, arch, size, shots)
    side = det.image_size
    x = det.backbone.preprocess_tensor(torch.from_numpy(rng.random((batch, 3, side, side), np.float32)))
    return lambda: det.predict(x)


def worker(args: argparse.Namespace) -> None:
    """One engine in this process, driven over stdin/stdout so the parent can interleave engines.

    Prints ``{"first_request_s"}`` once the engine is built and has run its first batch (the time starts before
    the model is built / the bundle is loaded and compiled, after the interpreter started), then answers each
    ``run`` line with the seconds of one batch, and ``stop`` with the peak RSS (psutil, sampled every 5 ms over
    the whole life of the process). Bundle engines import neither torch nor vlmad, as on a line PC."""
    import numpy as np
    import psutil

    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    run = _open_engine(tuple(json.loads(args.config)), args.bundle, args.threads, np.random.default_rng(7))
    run()
    print(json.dumps({"first_request_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        run()
        print(json.dumps({"s": time.perf_counter() - t}), flush=True)
    stop.set()
    print(json.dumps({"peak_rss_mib": max(peak[0], proc.memory_info().rss) / 2**20}), flush=True)


def bundle_folder(cache: Path, cfg: tuple, engine: str) -> Path:
    """Where a config's bundle for ``engine`` is cached (batch size is not part of a bundle)."""
    method, arch, size, shots, _ = cfg
    return cache / f"{method}-{arch}-{size or 'native'}-{shots}shot-{engine}-r{EXPORT_REV}"


def export_all(cfg: tuple, cache: Path) -> dict[str, dict]:
    """Bundles of one config for every exported engine, built once into ``cache`` and reused by later runs:
    {engine: {path, size_mib, export_s, verification}}. The three bundles share one ONNX trace."""
    import torch

    from vlmad.export.build import ExportRequest, export_bundle
    from vlmad.testing import random_images

    method, arch, size, shots, _ = cfg
    det = calib = None
    traced, out = None, {}
    for engine, fmt, precision in ENGINES[1:]:
        folder = bundle_folder(cache, cfg, engine)
        sidecar = folder.with_name(folder.name + ".export.json")
        if not (folder / "manifest.json").is_file() or not sidecar.is_file():
            if det is None:
                det = detector(method, arch, size, shots)
                calib = det.backbone.preprocess_tensor(random_images(8, det.image_size, seed=3))
            shutil.rmtree(folder, ignore_errors=True)
            t = time.perf_counter()
            req = ExportRequest(
                out=folder,
                format=fmt,
                precision=precision,
                verify=calib[:4],
                calibration=calib,
                class_name="bottle",
                traced=traced,
            )
            with torch.no_grad():
                export_bundle(det, req)
            sidecar.write_text(json.dumps({"export_s": time.perf_counter() - t}) + "\n")
            print(f"  exported {folder.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        if fmt == "onnx":
            traced = folder / "model.onnx"
        out[engine] = {
            "path": str(folder),
            "export_s": json.loads(sidecar.read_text())["export_s"],
            "verification": json.loads((folder / "manifest.json").read_text())["verification"],
            "size_mib": sum(p.stat().st_size for p in folder.iterdir()) / 2**20,
        }
    return out


class Engine:
    """A worker subprocess running one engine; started one at a time so first-request latency is not contended
    by the other engines of the config (they are idle while it starts)."""

    def __init__(self, name: str, cfg: tuple, bundle: str | None, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--worker", "--config", json.dumps(cfg), "--threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
        self.name, self.times = name, []
        self.proc = subprocess.Popen(
            cmd + (["--bundle", bundle] if bundle else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.first_request_s = self._read()["first_request_s"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited with {self.proc.wait()} (its stderr is above)")
        return json.loads(line)

    def timed_batch(self) -> None:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.times.append(self._read()["s"])

    def close(self) -> float:
        """Stop the worker; its peak RSS in MiB."""
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        rss = self._read()["peak_rss_mib"]
        self.proc.wait()
        return rss


def measure_config(name: str, cfg: tuple, bundles: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """All engines of one config, interleaved: the first request (build/load + first batch) is the warm-up, then
    ``repeats`` rounds in which every engine runs one timed batch (the order rotates per round), so a load spike
    from the shared machine hits all engines alike; images/s from the median batch time."""
    engines = []
    try:
        for engine, _, _ in ENGINES:
            engines.append(Engine(engine, cfg, bundles.get(engine, {}).get("path"), args))
            print(f"  {name} {engine}: first request {engines[-1].first_request_s:.1f} s", file=sys.stderr, flush=True)
        for r in range(args.repeats):
            for e in engines[r % len(engines) :] + engines[: r % len(engines)]:
                e.timed_batch()
        rss = [e.close() for e in engines]
    finally:
        for e in engines:
            if e.proc.poll() is None:
                e.proc.kill()
    batch = cfg[4]
    base = batch / statistics.median(engines[0].times)
    rows = []
    for e, peak in zip(engines, rss, strict=True):
        ips = batch / statistics.median(e.times)
        info = {k: v for k, v in bundles.get(e.name, {}).items() if k != "path"}
        rows.append(
            {
                "config": name,
                "engine": e.name,
                "images_per_s": ips,
                "ratio": ips / base,
                "first_request_s": e.first_request_s,
                "peak_rss_mib": peak,
                "batch_s": e.times,
                **info,
            }
        )
        print(f"{name:14s} {e.name:14s} {ips:8.2f} img/s  x{ips / base:.2f}", file=sys.stderr, flush=True)
    return rows


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
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping the bundles between runs (else a temp)")
    ap.add_argument("--export-only", action="store_true", help="build (or check) the bundles, measure nothing")
    ap.add_argument("--merge", action="store_true", help="keep the other configs' rows of the results file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print_environment(
        "export_speed: exported bundles vs the torch detector", args.smoke, args.threads, **{"CPU flags": cpu_flags()}
    )
    configs = SMOKE if args.smoke else CONFIGS
    names = args.configs.split(",") if args.configs else list(configs)
    with tempfile.TemporaryDirectory(prefix="vlmad-export-bench-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        exported = {name: export_all(configs[name], cache) for name in names}  # all bundles first, then timing
        if args.export_only:
            return
        measured: list[dict] = []  # this run's rows only: a merged file's rows must not count as measured
        written: list[dict] = []
        for name in names:
            before = os.getloadavg()
            new = measure_config(name, configs[name], exported[name], args)
            stamp = {"repeats": args.repeats, "threads": args.threads, "load_average_before": before}
            measured += [{**r, **stamp, "load_average_after": os.getloadavg()} for r in new]
            written = save(measured, args, configs)
    print(table(written))


def cpu_flags() -> str:
    """The CPU features the runtimes' fast kernels depend on (int8 dot products, bf16/AMX tiles)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def save(rows: list[dict], args: argparse.Namespace, configs: dict) -> list[dict]:
    """Write the table so far (after every config: a long run stopped midway keeps what it measured). With
    ``--merge`` the file's rows of configs not measured by this run are kept (a rerun of one config replaces its
    rows); rows are ordered as the configs. Returns the rows written."""
    stem = "export_speed_smoke" if args.smoke else "export_speed"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stem}.json"
    done = {r["config"] for r in rows}
    if args.merge and path.is_file():
        rows = [r for r in json.loads(path.read_text())["rows"] if r["config"] not in done] + rows
    order = list(configs)
    rows = sorted(rows, key=lambda r: order.index(r["config"]) if r["config"] in order else len(order))
    env = environment(args.threads)
    meta = {
        "environment": {**env, "CPU flags": cpu_flags()},
        "configs": {r["config"]: configs[r["config"]] for r in rows},
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    header = "\n".join(f"- {k}: {v}" for k, v in meta["environment"].items())
    loads = "\n".join(
        f"- {r['config']}: {r['repeats']} timed batches per engine, {r['threads']} threads, load average (1/5/15 min) "
        f"before {' '.join(f'{x:.1f}' for x in r['load_average_before'])}, "
        f"after {' '.join(f'{x:.1f}' for x in r['load_average_after'])}"
        for r in rows
        if r["engine"] == "torch"
    )
    (RESULTS / f"{stem}.md").write_text(f"# export_speed\n\n{header}\n\n{table(rows)}\n\n{loads}\n")
    return rows


if __name__ == "__main__":
    main()
