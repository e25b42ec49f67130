"""The efficiency table: latency, memory, FLOPs, parameters and set-up times per (method, model, input size,
shots, device, precision, batch size), medians over rows of warm batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmad.bench.stats import maximum as _max
from vlmad.bench.stats import median as _median
from vlmad.bench.stats import num as _num
from vlmad.bench.tables.configs import RANDOM_MARK
from vlmad.bench.tables.markdown import md_table
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP


def efficiency_records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        eff = r.get("efficiency") or {}
        info = r.get("detector") or {}
        key = (
            r["method_label"],
            info.get("model"),
            info.get("image_size"),
            r["shots"],
            eff.get("device"),
            info.get("precision"),
            eff.get("batch_size"),
            bool(r.get("random_weights")),
        )
        groups.setdefault(key, []).append(r)
    out = []
    for (label, model, size, shots, device, precision, batch, rand), rs in sorted(
        groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])
    ):
        effs = [r.get("efficiency") or {} for r in rs]
        warm = [e for e in effs if e.get("warm")]
        src = warm or effs
        ms = _median(e.get("ms_per_image") for e in src)
        misses = [e.get("setup_s") for e in effs if e.get("text_cache") == "miss"]
        out.append(
            {
                "method": label,
                "model": model,
                "input_px": size,
                "shots": shots,
                "device": device,
                "precision": precision,
                "batch_size": batch,
                "rows": len(rs),
                "ms_per_image": ms,
                "images_per_s": (1000.0 / ms) if ms else None,
                "warm": bool(warm),
                "load_ms_per_image": _median(e.get("load_ms_per_image") for e in effs),
                "num_workers": _max(e.get("num_workers") for e in effs),
                "rss_increase_mb": _max(e.get("rss_increase_mb") for e in effs),
                "process_peak_rss_mb": _max(e.get("process_peak_rss_mb") for e in effs),
                "cuda_peak_mb": _max(e.get("cuda_peak_mb") for e in effs),
                "params_backbone_m": _scaled(_max(e.get("params_backbone") for e in effs), 1e-6),
                "params_method_m": _scaled(_max(e.get("params_method") for e in effs), 1e-6),
                "gflops_per_image": _max(e.get("gflops_per_image") for e in effs),
                "state_mb": _max(e.get("state_mb") for e in effs),
                "text_setup_s": _median(misses) if misses else _median(e.get("setup_s") for e in effs),
                "text_cache": "miss" if misses else ("hit" if any(e.get("text_cache") == "hit" for e in effs) else ""),
                "fit_s": _median(e.get("fit_s") for e in effs) if shots else None,
                "model_load_s": _median(e.get("model_load_s") for e in effs),
                "random_weights": rand,
            }
        )
    return out


def _scaled(v: float | None, factor: float) -> float | None:
    return None if v is None else v * factor


_HEADER = [
    "method",
    "model",
    "px",
    "shots",
    "device",
    "batch",
    "ms/img",
    "img/s",
    "load ms/img",
    "workers",
    "mem +MB",
    "peak MB",
    "CUDA MB",
    "params M (backbone+method)",
    "GFLOPs/img",
    "text setup s",
    "fit s",
    "model load s",
]

_NOTES = [
    "",
    "- **ms/img, img/s**: wall time of `predict` only, median over rows, excluding each row's first batch "
    "(warm); `*` = rows had a single batch, so the number includes warm-up.",
    "- **load ms/img**: reading + decoding + preprocessing one image (+ mask) in a loader worker, excluded from "
    "ms/img; images are decoded once per (method, category) and reused by its other rows.",
    "- **mem +MB**: largest RSS increase during a `predict` call (CPU; on a category's first row the loader "
    "threads run concurrently and count too); **peak MB**: process peak RSS; **CUDA MB**: "
    "`torch.cuda.max_memory_allocated` per row.",
    "- **GFLOPs/img**: FlopCounterMode on a one-image `predict` (matmul/conv/attention only).",
    "- **text setup s**: text embeddings for one class (`setup`); **fit s**: building the reference memory.",
    "",
]


def _line(r: Mapping[str, Any]) -> list[str]:
    """One record's cells, formatted."""
    ms = _num(r["ms_per_image"]) + ("" if r["warm"] or r["ms_per_image"] is None else "*")
    params = "—" if r["params_backbone_m"] is None else f"{r['params_backbone_m']:.2f}+{r['params_method_m'] or 0:.2f}"
    text = _num(r["text_setup_s"], 2) + (" (cache hit)" if r["text_cache"] == "hit" else "")
    return [
        r["method"] + (f" {RANDOM_MARK}" if r["random_weights"] else ""),
        str(r["model"]),
        str(r["input_px"]),
        str(r["shots"]),
        str(r["device"]),
        str(r["batch_size"]),
        ms,
        _num(r["images_per_s"]),
        _num(r["load_ms_per_image"]),
        _num(r["num_workers"], 0),
        _num(r["rss_increase_mb"]),
        _num(r["process_peak_rss_mb"], 0),
        _num(r["cuda_peak_mb"], 0),
        params,
        _num(r["gflops_per_image"], 2),
        text,
        _num(r["fit_s"], 2),
        _num(r["model_load_s"], 2),
    ]


def efficiency_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """The efficiency page (markdown) of :func:`efficiency_records`, with what each column measures."""
    lines = ["# Efficiency", ""]
    if any(r["random_weights"] for r in records):
        lines += [f"> Rows marked {RANDOM_MARK}: {RANDOM_WEIGHTS_STAMP} (timings and sizes are still real).", ""]
    lines += md_table(_HEADER, [_line(r) for r in records], align_right_from=2)
    lines += _NOTES
    return "\n".join(lines)
