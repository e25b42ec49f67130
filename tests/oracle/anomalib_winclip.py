"""Parity oracle: anomalib 2.7.0's WinClipModel, run in its own environment (open_clip < 2.26.1).

Runs as a subprocess of the tests/benchmarks with the oracle interpreter; it must not import vlmad. Arrays travel
through .npy/.npz files. Usage:
  python anomalib_winclip.py --arch NAME [--config-dir DIR] --weights W.safetensors --images X.npy
         [--refs R.npy --shots 0,1,2,4] --class-name NAME [--scales 2,3] --out OUT.npz [--repeat N] [--batch-size B]
For every K in --shots a fresh model gets the first K references; outputs are saved as scores_k{K} / maps_k{K}.
With --repeat the zero-shot forward is timed (after one warm-up) and the timings, text setup time and peak RSS
are saved instead.
"""

import argparse
import resource
import time

import numpy as np
import torch


def peak_rss_mb() -> float:
    """Own peak RSS (VmHWM): ru_maxrss survives fork+exec and could report the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--config-dir")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--refs")
    ap.add_argument("--shots", default="0")
    ap.add_argument("--class-name", required=True)
    ap.add_argument("--scales", default="2,3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import open_clip
    from anomalib.models.image.winclip import torch_model as tm
    from safetensors.torch import load_file

    if args.config_dir:
        open_clip.add_model_config(args.config_dir)
    tm.PRETRAINED = None
    tm.BACKBONE = args.arch
    scales = tuple(int(s) for s in args.scales.split(","))
    state = load_file(args.weights)
    refs = torch.from_numpy(np.load(args.refs)) if args.refs else None
    images = torch.from_numpy(np.load(args.images))
    bs = args.batch_size or images.shape[0]
    out = {}
    for k in (int(s) for s in args.shots.split(",")):
        model = tm.WinClipModel(scales=scales)
        model.clip.load_state_dict(state)
        model.eval()
        t0 = time.perf_counter()
        model.setup(args.class_name)
        out["text_setup_s"] = np.array(time.perf_counter() - t0)
        out["text_embeddings"] = model.text_embeddings.numpy()
        if k:
            model.setup(reference_images=refs[:k])
        with torch.no_grad():
            if args.repeat:
                batch = images[:bs]
                model(batch)  # warm-up
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    r = model(batch)
                    times.append(time.perf_counter() - t)
                out["forward_s"] = np.array(times)
                out["batch_size"] = np.array(bs)
                out[f"scores_k{k}"] = r.pred_score.numpy()
                out[f"maps_k{k}"] = r.anomaly_map.numpy()
                continue
            scores, maps = [], []
            for start in range(0, images.shape[0], bs):
                r = model(images[start : start + bs])
                scores.append(r.pred_score)
                maps.append(r.anomaly_map)
            out[f"scores_k{k}"] = torch.cat(scores).numpy()
            out[f"maps_k{k}"] = torch.cat(maps).numpy()
            if k == 0:
                img_emb, win_emb, patch_emb = model.encode_image(images[:bs])
                out["image_embeddings"] = img_emb.numpy()
                for i, w in enumerate(win_emb):
                    out[f"window_embeddings_{scales[i]}"] = w.numpy()
                out["patch_embeddings"] = patch_emb.numpy()
    out["peak_rss_mb"] = np.array(peak_rss_mb())
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
