"""Where an OpenVINO bundle spends its time: per node type and kernel (OpenVINO's PERF_COUNT), per precision hint.

Usage::

    python benchmarks/export_profile.py --bundle DIR                    # f32 hint (what the runtime uses)
    python benchmarks/export_profile.py --bundle DIR --hints f32 bf16   # + bf16 for the non-quantised ops
    python benchmarks/export_profile.py --smoke                         # exports a tiny WinCLIP bundle first

Explains the ratios of ``export_speed.py`` (see docs/export.md, "Speed"): whether a graph is GEMM-bound (then
every exact fp32 engine runs the same FLOPs on the same AVX-512 units as torch, and only bf16/int8 AMX tiles are
faster), and, for int8 bundles, which ops stay in f32 (dequantisation scales, layer norms, transposes, splits).
For each hint: compile (the batch axis stays dynamic, as in :mod:`vlmad_runtime.bundle`), one untimed batch,
then one profiled batch: its wall time, the top node types (summed time, share, count, kernel) and the max-abs
difference of its maps from the first hint's.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _env import add_smoke_flag, print_environment


def tiny_bundle(folder: Path) -> Path:
    """A tiny WinCLIP OpenVINO fp32 bundle (random init) for ``--smoke``."""
    from vlmad.export.build import ExportRequest, export_bundle
    from vlmad.methods import create_detector
    from vlmad.testing import random_images

    det = create_detector("winclip", model="vlmad-tiny-vit", random_weights=True, use_cache=False)
    det.setup("bottle")
    verify = det.backbone.preprocess_tensor(random_images(2, det.image_size, seed=3))
    export_bundle(det, ExportRequest(out=folder, format="openvino", verify=verify, class_name="bottle"))
    return folder


def profile(folder: Path, hint: str, threads: int, batch: int) -> tuple[np.ndarray, list[str]]:
    """Profile one batch of ``folder`` compiled with INFERENCE_PRECISION_HINT=``hint``: (maps, report lines)."""
    import openvino as ov

    manifest = json.loads((folder / "manifest.json").read_text())
    size = int(manifest["preprocessing"]["image_size"])
    config = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
    t = time.perf_counter()
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    compile_s = time.perf_counter() - t
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    request.infer({0: x})
    t = time.perf_counter()
    maps = request.infer({0: x})[compiled.output("maps")].copy()
    wall = time.perf_counter() - t
    total, count = collections.Counter(), collections.Counter()
    for node in request.profiling_info:
        key = (node.node_type, node.exec_type)
        total[key] += node.real_time.total_seconds()
        count[key] += 1
    summed = sum(total.values()) or 1.0
    lines = [f"hint {hint}: compile {compile_s:.1f} s, profiled batch of {batch}: {wall:.2f} s wall"]
    lines += [
        f"  {1e3 * sec:10.1f} ms {100 * sec / summed:5.1f}%  x{count[key]:<4d} {key[0]} ({key[1]})"
        for key, sec in total.most_common(12)
    ]
    return maps, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_smoke_flag(ap)
    ap.add_argument("--bundle", type=Path, help="an OpenVINO bundle folder written by `vlmad export`")
    ap.add_argument("--hints", nargs="+", default=["f32"], choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    if not args.smoke and args.bundle is None:
        ap.error("pass --bundle DIR (or --smoke)")
    print_environment("export_profile: OpenVINO per-node profile of a bundle", args.smoke, args.threads)
    with tempfile.TemporaryDirectory(prefix="vlmad-export-profile-") as tmp:
        folder = tiny_bundle(Path(tmp) / "b") if args.smoke else args.bundle
        print(f"# bundle: {folder.name}, precision {json.loads((folder / 'manifest.json').read_text())['precision']}")
        first = None
        for hint in args.hints:
            maps, lines = profile(folder, hint, args.threads, args.batch)
            first = maps if first is None else first
            print("\n".join(lines))
            print(f"  max-abs of maps vs hint {args.hints[0]}: {float(np.abs(maps - first).max()):.2e}", flush=True)


if __name__ == "__main__":
    main()
