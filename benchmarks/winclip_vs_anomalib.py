"""WinCLIP speed, memory and parity: vlmad vs anomalib 2.7.0, product vs product, same weights, same images.

Fair by construction: every process gets the same thread count (``--threads``: torch threads and OMP_NUM_THREADS)
and both products are measured under the *same* allocator, twice — glibc's default, and glibc tuned through
``GLIBC_TUNABLES`` (mmap threshold 32 MiB, trim threshold 1 GiB: the settings vlmad applies to itself with
``mallopt``). vlmad runs with ``VLMAD_MALLOC_TUNING=0`` in those rows so the environment alone decides; a last row
is vlmad as shipped (self-tuning on, no GLIBC_TUNABLES). Each configuration is a fresh subprocess per round
(anomalib in its oracle environment with open_clip 2.24), rounds alternate the configurations, and every round
times ``--repeat`` (>= 5) forwards of one batch after a warm-up: the table gives the median over all timed
forwards with min-max and the relative spread. Peak RSS is each process's own high-water mark (load the weights,
build text embeddings, score the batches).

Breakdown of the speed-up at equal allocator: (a) skipped FLOPs — vlmad executes fewer FLOPs per image (counted
from the architecture); if both ran at the same GFLOP/s that alone would give reference / executed FLOPs;
(b) kernels and layout — the rest, i.e. the ratio of achieved GFLOP/s (executed FLOPs / time) of the two; (c) the
allocator — each product's default-vs-tuned ratio, which is not part of (a) or (b).

    python benchmarks/winclip_vs_anomalib.py [--arch ViT-B-16-plus-240] [--batch-size 4] [--repeat 5]
        [--rounds 2] [--threads N] [--oracle-python .venv-oracle/bin/python] [--no-int8]
    python benchmarks/winclip_vs_anomalib.py --smoke     # tiny model: checks the script runs (CI)

Random weights (no pretrained weights can be downloaded on the build machines) made discriminative, so that maps
vary and the parity gap is meaningful. Reduced precision: int8 on CPU (dynamic quantisation of the linear layers)
and bf16 on CPU (fast where the CPU has AMX / AVX512-BF16); fp16 and bf16 when a CUDA device is present; each
with its speed-up over fp32 and its parity gap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _env import add_smoke_flag, print_environment

ROOT = Path(__file__).resolve().parents[1]
ORACLE_SCRIPT = ROOT / "tests" / "oracle" / "anomalib_winclip.py"
CLASS_NAME = "bottle"


def peak_rss_mb() -> float:
    """This process's own peak RSS in MiB (vlmad's one reader: ``VmHWM``, not ``ru_maxrss``, which Linux carries
    over fork and exec)."""
    from vlmad.bench.profile import MB, process_peak_rss

    peak = process_peak_rss()
    return float("nan") if peak is None else peak / MB


def reference_flops(bb, scales) -> float:
    """FLOPs of one image as the reference computes it (every window through every block), counted from the
    architecture: GEMMs of q/k/v, output projection and MLP, attention products, patch embedding, projections."""
    d = bb.width
    blk = bb.visual.transformer.resblocks[0]
    hidden = blk.mlp.c_fc.out_features
    gh, gw = bb.grid_size
    lengths = [1 + gh * gw] + [1 + s * s for s in scales for _ in range((gh - s + 1) * (gw - s + 1))]
    per_layer = sum(2 * n * (4 * d * d + 2 * d * hidden) + 4 * n * n * d for n in lengths)
    patch = 2 * gh * gw * 3 * bb.patch_size**2 * d
    return float(bb.num_layers * per_layer + patch + 2 * len(lengths) * d * bb.embed_dim)


def skipped_flops(bb, scales, zero_shot: bool = True) -> float:
    """What vlmad's fast path does not compute of :func:`reference_flops`, by the same count: in the last block
    the non-[CLS] rows' query, output projection, MLP and attention rows (windows; the image too in zero-shot),
    and in the first block the q/k/v projections of window tokens (computed once per image token instead)."""
    d = bb.width
    hidden = bb.visual.transformer.resblocks[0].mlp.c_fc.out_features
    gh, gw = bb.grid_size
    windows = [1 + s * s for s in scales for _ in range((gh - s + 1) * (gw - s + 1))]
    last = windows + ([1 + gh * gw] if zero_shot else [])
    skipped = sum((n - 1) * (4 * d * d + 4 * d * hidden) + 4 * (n - 1) * n * d for n in last)
    skipped += sum(2 * n * 3 * d * d for n in windows) - 2 * (1 + gh * gw) * 3 * d * d
    return float(skipped)


# --------------------------------------------------------------------------- worker (vlmad side)
def vlmad_worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from vlmad.backbones import ClipBackbone, TextEmbeddingCache
    from vlmad.methods.winclip import WinClip

    device = args.device
    t0 = time.perf_counter()
    bb = ClipBackbone.load(args.arch, checkpoint=args.weights, device=device, precision=args.precision)
    load_s = time.perf_counter() - t0
    images = torch.from_numpy(np.load(args.images))
    out: dict = {"load_s": load_s}

    det = WinClip(bb, cache=TextEmbeddingCache(enabled=False), batch_size=args.batch_size)
    t0 = time.perf_counter()
    det.setup(CLASS_NAME)
    out["text_setup_cold_s"] = time.perf_counter() - t0
    cache = TextEmbeddingCache(Path(args.workdir) / f"cache-{args.precision}")
    WinClip(bb, cache=cache).setup(CLASS_NAME)  # fills the cache
    warm = WinClip(bb, cache=TextEmbeddingCache(Path(args.workdir) / f"cache-{args.precision}"))
    t0 = time.perf_counter()
    warm.setup(CLASS_NAME)
    out["text_setup_warm_s"] = time.perf_counter() - t0
    assert warm.cache.hits == 1

    batch = images[: args.batch_size]
    det.predict(batch)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pred = det.predict(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out["forward_s"] = times
    out["batch_size"] = int(batch.shape[0])
    np.save(Path(args.workdir) / f"vlmad-{args.precision}-maps.npy", pred.anomaly_maps.numpy())
    np.save(Path(args.workdir) / f"vlmad-{args.precision}-scores.npy", pred.image_scores.numpy())

    if args.count_flops and device == "cpu" and args.precision == "fp32":
        out["flops_per_image_reference"] = reference_flops(bb, det.scales)
        out["flops_per_image_vlmad"] = out["flops_per_image_reference"] - skipped_flops(bb, det.scales)
        a = torch.randn(2048, 2048)
        b = torch.randn(2048, 2048)
        torch.mm(a, b)
        t0 = time.perf_counter()
        reps = 10
        for _ in range(reps):
            torch.mm(a, b)
        out["gemm_gflops"] = reps * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
        out["threads"] = torch.get_num_threads()
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(out))


# --------------------------------------------------------------------------- orchestration
def run(cmd: list[str], env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def tuned_tunables() -> str:
    """GLIBC_TUNABLES with the settings vlmad's own ``mallopt`` tuning applies (vlmad.backbones.cpu)."""
    from vlmad.backbones.cpu import MMAP_THRESHOLD_MAX, TRIM_THRESHOLD

    return f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD_MAX}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"


def configurations(threads: int) -> list[dict]:
    """(label, product, environment) of every speed row; thread counts equal everywhere."""
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VLMAD_MALLOC_TUNING")}
    base.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    tuned = tuned_tunables()
    return [
        {"key": "anomalib/default", "product": "anomalib", "env": dict(base)},
        {"key": "vlmad/default", "product": "vlmad", "env": dict(base, VLMAD_MALLOC_TUNING="0")},
        {"key": "anomalib/tuned", "product": "anomalib", "env": dict(base, GLIBC_TUNABLES=tuned)},
        {"key": "vlmad/tuned", "product": "vlmad", "env": dict(base, GLIBC_TUNABLES=tuned, VLMAD_MALLOC_TUNING="0")},
        {"key": "vlmad/shipped", "product": "vlmad", "env": dict(base)},
    ]


def anomalib_cmd(args, weights: Path, work: Path, out: Path) -> list[str]:
    from vlmad.backbones.loading import CONFIG_DIR

    return [
        args.oracle_python,
        str(ORACLE_SCRIPT),
        "--arch",
        args.arch,
        "--config-dir",
        str(CONFIG_DIR),
        "--weights",
        str(weights),
        "--images",
        str(work / "images.npy"),
        "--class-name",
        CLASS_NAME,
        "--repeat",
        str(args.repeat),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]


def vlmad_cmd(args, weights: Path, work: Path, out: Path, precision: str, device: str, flops: bool) -> list[str]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--arch",
        args.arch,
        "--weights",
        str(weights),
        "--images",
        str(work / "images.npy"),
        "--result",
        str(out),
        "--precision",
        precision,
        "--device",
        device,
        "--batch-size",
        str(args.batch_size),
        "--repeat",
        str(args.repeat),
        "--workdir",
        str(work),
        "--threads",
        str(args.threads),
    ]
    return cmd + (["--count-flops"] if flops else [])


def run_speed_rows(args, weights: Path, work: Path) -> tuple[dict, dict, dict]:
    """Every configuration once per round, alternating; returns (forward samples, last result, oracle output)."""
    samples: dict[str, list[float]] = {}
    last: dict[str, dict] = {}
    oracle: dict = {}
    configs = configurations(args.threads)
    for rnd in range(args.rounds):
        for cfg in configs:
            print(f"round {rnd + 1}/{args.rounds}: {cfg['key']} ...", flush=True)
            if cfg["product"] == "anomalib":
                out = work / "anomalib.npz"
                run(anomalib_cmd(args, weights, work, out), env=cfg["env"])
                with np.load(out) as d:
                    res = {k: d[k] for k in d.files}
                if cfg["key"] == "anomalib/tuned":
                    oracle = res
                res = {
                    "forward_s": [float(t) for t in res["forward_s"]],
                    "peak_rss_mb": float(res["peak_rss_mb"]),
                    "text_setup_cold_s": float(res["text_setup_s"]),
                }
            else:
                out = work / f"{cfg['key'].replace('/', '-')}.json"
                first = cfg["key"] == "vlmad/tuned" and rnd == 0
                run(vlmad_cmd(args, weights, work, out, "fp32", "cpu", flops=first), env=cfg["env"])
                res = json.loads(out.read_text())
                if first:
                    last["flops"] = res
                if cfg["key"] == "vlmad/tuned":
                    for kind in ("maps", "scores"):
                        os.replace(work / f"vlmad-fp32-{kind}.npy", work / f"vlmad-fp32-cpu-{kind}.npy")
            samples.setdefault(cfg["key"], []).extend(res["forward_s"])
            last[cfg["key"]] = res
    return samples, last, oracle


def stats(times: list[float]) -> dict[str, float]:
    t = np.asarray(times, dtype=float)
    med = float(np.median(t))
    return {
        "median": med,
        "min": float(t.min()),
        "max": float(t.max()),
        "n": int(t.size),
        "spread": float((t.max() - t.min()) / med),
        "iqr": float(np.subtract(*np.percentile(t, [75, 25])) / med),
    }


def print_speed_table(args, samples: dict, last: dict) -> dict[str, dict]:
    bs = args.batch_size
    st = {k: stats(v) for k, v in samples.items()}
    print(
        f"\nspeed, zero-shot fp32 on CPU: batch {bs}, {args.threads} thread(s) everywhere; median of "
        f"{args.repeat} timed forwards x {args.rounds} round(s) per row"
    )
    print(f"{'configuration':<44}{'s/batch':>9}{'img/s':>8}{'min-max s':>17}{'spread':>8}{'IQR':>7}{'peak MB':>9}")
    labels = {
        "anomalib/default": "anomalib 2.7.0, glibc default malloc",
        "vlmad/default": "vlmad (VLMAD_MALLOC_TUNING=0), glibc default",
        "anomalib/tuned": "anomalib 2.7.0, GLIBC_TUNABLES tuned",
        "vlmad/tuned": "vlmad (VLMAD_MALLOC_TUNING=0), GLIBC_TUNABLES",
        "vlmad/shipped": "vlmad as shipped (self-tuned via mallopt)",
    }
    for key, s in st.items():
        print(
            f"{labels[key]:<44}{s['median']:>9.3f}{bs / s['median']:>8.2f}{s['min']:>8.3f}-{s['max']:<8.3f}"
            f"{100 * s['spread']:>7.1f}%{100 * s['iqr']:>6.1f}%{last[key]['peak_rss_mb']:>9.0f}"
        )
    return st


def print_breakdown(st: dict, flops: dict, bs: int) -> float:
    """Ratios of medians: product vs product at equal allocator, and what the speed-up is made of."""
    ref_flops = flops["flops_per_image_reference"]
    our_flops = flops["flops_per_image_vlmad"]
    flop_ratio = ref_flops / our_flops
    equal_tuned = st["anomalib/tuned"]["median"] / st["vlmad/tuned"]["median"]
    equal_default = st["anomalib/default"]["median"] / st["vlmad/default"]["median"]
    shipped = st["anomalib/default"]["median"] / st["vlmad/shipped"]["median"]
    print("\nproduct vs product (anomalib time / vlmad time, medians)")
    print(f"  equal allocator, both tuned through GLIBC_TUNABLES : {equal_tuned:.2f}x   <- the fair number")
    print(f"  equal allocator, both glibc default               : {equal_default:.2f}x")
    print(f"  each as shipped (anomalib default, vlmad tuned)   : {shipped:.2f}x   (mixes in the allocator)")
    gf = {k: (ref_flops if k.startswith("anomalib") else our_flops) * bs / st[k]["median"] / 1e9 for k in st}
    print("\nbreakdown of the equal-allocator (tuned) speed-up")
    print(
        f"  (a) skipped FLOPs: reference {ref_flops / 1e12:.3f} TFLOP/img, vlmad executes {our_flops / 1e12:.3f} "
        f"({100 * (1 - our_flops / ref_flops):.1f}% skipped: last-block non-CLS rows, shared block-1 q/k/v) "
        f"-> {flop_ratio:.3f}x at equal GFLOP/s"
    )
    print(
        f"  (b) kernels / layout: achieved GFLOP/s of executed FLOPs, anomalib {gf['anomalib/tuned']:.1f} vs "
        f"vlmad {gf['vlmad/tuned']:.1f} -> {gf['vlmad/tuned'] / gf['anomalib/tuned']:.3f}x "
        f"(= {equal_tuned:.2f} / {flop_ratio:.3f})"
    )
    print(
        f"  (c) allocator (not part of a or b): tuning speeds anomalib up "
        f"{st['anomalib/default']['median'] / st['anomalib/tuned']['median']:.2f}x and vlmad "
        f"{st['vlmad/default']['median'] / st['vlmad/tuned']['median']:.2f}x; vlmad's mallopt vs the same "
        f"settings via GLIBC_TUNABLES: {st['vlmad/tuned']['median'] / st['vlmad/shipped']['median']:.2f}x"
    )
    print(f"  plain fp32 GEMM here: {flops['gemm_gflops']:.1f} GFLOP/s ({flops.get('threads', '?')} thread(s))")
    return equal_tuned


def print_parity_and_setup(work: Path, oracle: dict, last: dict) -> bool:
    v_maps = np.load(work / "vlmad-fp32-cpu-maps.npy")
    v_scores = np.load(work / "vlmad-fp32-cpu-scores.npy")
    map_gap = float(np.abs(v_maps - oracle["maps_k0"]).max())
    score_gap = float(np.abs(v_scores - oracle["scores_k0"]).max())
    map_range = float(oracle["maps_k0"].max() - oracle["maps_k0"].min())
    a, v = last["anomalib/tuned"], last["vlmad/tuned"]
    print(
        f"\nparity vs anomalib: max|score diff| {score_gap:.2e}, max|map diff| {map_gap:.2e} "
        f"(oracle map range {map_range:.3f}) -> {'PASS' if max(map_gap, score_gap) <= 1e-5 else 'FAIL'}"
    )
    print(
        f"cold text setup: anomalib {a['text_setup_cold_s']:.3f} s, vlmad {v['text_setup_cold_s']:.3f} s "
        f"({a['text_setup_cold_s'] / v['text_setup_cold_s']:.1f}x); warm (cache hit) vlmad "
        f"{v['text_setup_warm_s']:.3f} s"
    )
    print(
        f"peak RSS at equal allocator: anomalib {a['peak_rss_mb']:.0f} MB, vlmad {v['peak_rss_mb']:.0f} MB "
        f"({v['peak_rss_mb'] / a['peak_rss_mb']:.2f}x)"
    )
    return max(map_gap, score_gap) <= 1e-5


def run_reduced_precision(args, weights: Path, work: Path) -> None:
    """int8 / bf16 on CPU (and fp16 / bf16 on CUDA) vs vlmad fp32 on the same device, vlmad as shipped."""
    import torch

    variants = [("fp32", "cpu")] + ([] if args.no_int8 else [("int8", "cpu"), ("bf16", "cpu")])
    if torch.cuda.is_available():
        variants += [("fp32", "cuda"), ("fp16", "cuda"), ("bf16", "cuda")]
    if len(variants) == 1:
        return
    env = configurations(args.threads)[-1]["env"]
    res = {}
    for precision, device in variants:
        print(f"vlmad {precision} on {device} ...", flush=True)
        out = work / f"vlmad-{precision}-{device}.json"
        run(vlmad_cmd(args, weights, work, out, precision, device, flops=False), env=env)
        res[(precision, device)] = json.loads(out.read_text())
        for kind in ("maps", "scores"):
            os.replace(work / f"vlmad-{precision}-{kind}.npy", work / f"vlmad-{precision}-{device}-{kind}.npy")
    bs = args.batch_size
    print(
        f"\n{'reduced precision':<22}{'device':>8}{'img/s':>10}{'speed-up':>10}{'max|map diff|':>15}"
        f"{'map rank corr':>15}{'max|score diff|':>17}"
    )
    for (precision, device), r in res.items():
        ips = bs / float(np.median(r["forward_s"]))
        base_ips = bs / float(np.median(res[("fp32", device)]["forward_s"]))
        maps = np.load(work / f"vlmad-{precision}-{device}-maps.npy")
        scores = np.load(work / f"vlmad-{precision}-{device}-scores.npy")
        base_maps = np.load(work / f"vlmad-fp32-{device}-maps.npy")
        base_scores = np.load(work / f"vlmad-fp32-{device}-scores.npy")
        print(
            f"{precision:<22}{device:>8}{ips:>10.3f}{ips / base_ips:>9.2f}x{np.abs(maps - base_maps).max():>15.2e}"
            f"{spearman(maps, base_maps):>15.4f}{np.abs(scores - base_scores).max():>17.2e}"
        )
    if not torch.cuda.is_available():
        print("fp16/bf16 on GPU: no CUDA device in this run")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16-plus-240")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5, help="timed forwards per process (>= 5)")
    ap.add_argument("--rounds", type=int, default=2, help="alternate all configurations this many times")
    ap.add_argument("--threads", type=int, default=0, help="threads for every process (default: min(4, CPUs))")
    default_oracle = os.environ.get("VLMAD_ORACLE_PYTHON") or str(ROOT / ".venv-oracle" / "bin" / "python")
    ap.add_argument("--oracle-python", default=default_oracle)
    ap.add_argument("--no-int8", action="store_true", help="skip the reduced-precision CPU runs (int8, bf16)")
    ap.add_argument("--workdir")
    add_smoke_flag(ap)
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke and not args.worker:
        args.arch, args.batch_size, args.rounds, args.threads = "vlmad-tiny-vit-240", 2, 1, 1
    if not args.worker and args.repeat < 5:
        ap.error("--repeat must be >= 5 (the table reports a median and a spread)")
    if not args.threads:
        visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        args.threads = min(4, visible)
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        vlmad_worker(args)
        return 0
    print_environment(
        "winclip_vs_anomalib: WinCLIP, vlmad vs anomalib 2.7.0 (fair: equal threads and allocator)",
        args.smoke,
        args.threads,
        arch=args.arch,
        **{"GLIBC_TUNABLES (tuned rows)": tuned_tunables()},
    )
    if not Path(args.oracle_python).exists():
        sys.exit(f"oracle python {args.oracle_python!r} not found: run `make oracle-env` or pass --oracle-python")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vlmad.backbones import ClipBackbone
    from vlmad.testing import discriminative_state_dict, random_images, save_state_dict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlmad-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = save_state_dict(discriminative_state_dict(args.arch), work / "weights.safetensors")
    bb = ClipBackbone.load(args.arch, checkpoint=str(weights))
    np.save(work / "images.npy", bb.preprocess_tensor(random_images(args.batch_size, bb.image_size, seed=1)).numpy())
    del bb
    print(
        f"arch {args.arch}, batch {args.batch_size}, repeat {args.repeat}, rounds {args.rounds}, threads "
        f"{args.threads}, workdir {work}",
        flush=True,
    )
    samples, last, oracle = run_speed_rows(args, weights, work)
    st = print_speed_table(args, samples, last)
    print_breakdown(st, last["flops"], args.batch_size)
    parity = print_parity_and_setup(work, oracle, last)
    run_reduced_precision(args, weights, work)
    return 0 if parity else 1  # speed is reported, never asserted; a parity break fails the run


if __name__ == "__main__":
    sys.exit(main())
