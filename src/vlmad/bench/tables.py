"""Tables from ``results.jsonl``: per-class and macro-mean metrics (markdown + CSV), efficiency, summary.

Comparability: every column of a table is one *configuration* (method + options, weights, shots, evaluation
resolution, ``--limit``, transductive, forced protocol, tags); rows that differ only by category or seed share
it, anything else gets its own column with the differing setting in its label and the full protocol in the
legend. Values are percent, mean ± sample standard deviation (ddof=1) over seeds; the macro mean is taken per
seed over the classes (with :func:`vlmad.metrics.macro_mean`), then averaged over seeds. Zero-shot has one run
(no seed), so no ±. A published number (macro only) is shown with the difference when the protocol matches
(:mod:`vlmad.bench.published`), "n/a" with a footnote otherwise.

Files: ``tables/<dataset>_image.{md,csv}``, ``tables/<dataset>_pixel.{md,csv}``, ``efficiency.{md,csv}`` and
``summary.md`` (everything in one page) in the run folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.bench.protocol import canonical, hash_key
from vlmad.bench.published import DATASET_NAMES, compare, entries_for
from vlmad.bench.results import load_results
from vlmad.bench.stats import maximum as _max
from vlmad.bench.stats import median as _median
from vlmad.bench.stats import num as _num
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.fileio import atomic_write_text

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro_legacy200")
METRIC_GROUPS = {"image": IMAGE_METRICS, "pixel": PIXEL_METRICS}
METRIC_NAMES = {
    "image_auroc": "i-AUROC",
    "image_ap": "i-AP",
    "image_f1_max": "i-F1max",
    "pixel_auroc": "p-AUROC",
    "pixel_ap": "p-AP",
    "pixel_f1_max": "p-F1max",
    "aupro": "AUPRO",
    "aupro_legacy200": "AUPRO-200",
}
RANDOM_MARK = "†"
MACRO = "macro mean"


# ---------------------------------------------------------------------------------------------------------------
# configurations (table columns)


def config_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """What must be equal for two rows' numbers to share a column (category and seed excluded)."""
    proto = row.get("protocol", {})
    info = dict(row.get("detector") or {})
    return canonical(
        {
            "label": row["method_label"],
            "method": row["method"],
            "spec": row.get("method_spec"),
            "weights": row.get("weights"),
            "info": info,
            "shots": row["shots"],
            "dataset": [row["dataset"]["kind"], row["dataset"]["root"]],
            "eval_resolution": proto.get("eval_resolution"),
            "limit": proto.get("limit"),
            "forced": bool(proto.get("protocol_forced")),
            "transductive": bool(proto.get("transductive")),
            "tags": row.get("tags") or {},
        }
    )


@dataclass
class Config:
    key: str
    rows: list[dict[str, Any]]
    label: str = ""

    @property
    def first(self) -> dict[str, Any]:
        return self.rows[0]

    @property
    def info(self) -> dict[str, Any]:
        return self.first.get("detector") or {}

    @property
    def random(self) -> bool:
        return bool(self.first.get("random_weights"))

    @property
    def shots(self) -> int:
        return int(self.first["shots"])

    @property
    def seeds(self) -> list[Any]:
        return sorted({r["seed"] for r in self.rows}, key=lambda s: (s is not None, s if s is not None else -1))

    @property
    def categories(self) -> list[str]:
        return sorted({r["dataset"]["category"] for r in self.rows})

    def cell_metrics(self) -> dict[tuple[str, Any], dict[str, float]]:
        """(category, seed) -> metrics (rows of the same cell, e.g. two AUPRO variants, are merged)."""
        out: dict[tuple[str, Any], dict[str, float]] = {}
        for r in self.rows:
            out.setdefault((r["dataset"]["category"], r["seed"]), {}).update(r.get("metrics") or {})
        return out

    def facts(self) -> dict[str, Any]:
        """Protocol facts for published-number matching."""
        f = self.first
        proto = f.get("protocol", {})
        cells = self.cell_metrics()
        complete = all((c, s) in cells for c in self.categories for s in self.seeds)
        return {
            "method": f["method"],
            "dataset_kind": f["dataset"]["kind"],
            "shots": self.shots,
            "random_weights": self.random,
            "weights": f.get("weights") or {},
            "image_size": self.info.get("image_size"),
            "info": self.info,
            "method_options": f.get("method_options") or {},
            "transductive": bool(proto.get("transductive")),
            "eval_resolution": proto.get("eval_resolution"),
            "limit": proto.get("limit"),
            "forced": bool(proto.get("protocol_forced")),
            "skipped_images": sum(int((r.get("n_images") or {}).get("skipped", 0)) for r in self.rows),
            "categories": self.categories,
            "complete": complete,
        }


def group_configs(rows: Iterable[Mapping[str, Any]]) -> list[Config]:
    configs: dict[str, Config] = {}
    for r in rows:
        key = hash_key(config_payload(r), 12)
        configs.setdefault(key, Config(key, [])).rows.append(dict(r))
    out = sorted(configs.values(), key=lambda c: (c.first["method_label"], c.shots, c.key))
    _assign_labels(out)
    return out


_DISTINGUISH = (
    ("model", lambda c: c.info.get("model")),
    ("weights", lambda c: c.info.get("weights_id")),
    ("size", lambda c: c.info.get("image_size")),
    ("prompts", lambda c: c.info.get("prompt_set")),
    ("precision", lambda c: c.info.get("precision")),
    ("eval", lambda c: c.first.get("protocol", {}).get("eval_resolution")),
    ("limit", lambda c: c.first.get("protocol", {}).get("limit")),
    ("options", lambda c: json.dumps(c.first.get("method_options") or {}, sort_keys=True)),
    ("tags", lambda c: json.dumps(c.first.get("tags") or {}, sort_keys=True)),
)


def _assign_labels(configs: list[Config]) -> None:
    for c in configs:
        name = c.info.get("method") if c.first["method_label"] == c.first["method"] else c.first["method_label"]
        base = f"{name or c.first['method_label']} {c.shots}-shot"
        if c.first.get("protocol", {}).get("transductive"):
            base += " (transductive)"
        if c.first.get("protocol", {}).get("protocol_forced"):
            base += " (forced)"
        c.label = base
    by_label: dict[str, list[Config]] = {}
    for c in configs:
        by_label.setdefault(c.label, []).append(c)
    for group in by_label.values():
        if len(group) < 2:
            continue
        extras: list[list[str]] = [[] for _ in group]
        for name, get in _DISTINGUISH:
            values = [get(c) for c in group]
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
                for i, v in enumerate(values):
                    extras[i].append(f"{name}={v}")
        for i, c in enumerate(group):
            if extras[i]:
                c.label += f" ({', '.join(extras[i])})"
    seen: dict[str, int] = {}
    for c in configs:
        n = seen.get(c.label, 0) + 1
        seen[c.label] = n
        if n > 1:
            c.label += f" #{n}"
    for c in configs:
        if c.random:
            c.label += f" {RANDOM_MARK}"


# ---------------------------------------------------------------------------------------------------------------
# statistics


@dataclass
class Stat:
    mean: float | None
    std: float | None = None
    n: int = 0
    note: str | None = None
    classes: int = 0
    values: list[float] = field(default_factory=list)


def _stat(values: Sequence[float]) -> Stat:
    if not values:
        return Stat(None)
    mean = math.fsum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean, std, len(values), values=list(values))


def class_stat(config: Config, category: str, metric: str) -> Stat:
    cells = config.cell_metrics()
    vals = [cells[(category, s)][metric] for s in config.seeds if metric in cells.get((category, s), {})]
    return _stat(vals)


def macro_stat(config: Config, metric: str) -> Stat:
    """Macro mean over the configuration's classes per seed, then mean ± std over seeds (complete seeds only)."""
    from vlmad.metrics import macro_mean

    cells = config.cell_metrics()
    cats = config.categories
    per_seed: list[float] = []
    incomplete = 0
    for s in config.seeds:
        have = {c: {metric: cells[(c, s)][metric]} for c in cats if metric in cells.get((c, s), {})}
        if not have:
            continue
        if len(have) < len(cats):
            incomplete += 1
            continue
        per_seed.append(macro_mean(have)[metric])
    st = _stat(per_seed)
    st.classes = len(cats)
    if incomplete:
        st.note = f"{incomplete} seed(s) left out: {metric} missing for some classes"
    return st


def fmt(st: Stat, signed: bool = False) -> str:
    """Mean ± std in points; ``signed`` for differences (always shows + or -)."""
    if st.mean is None:
        return "—"
    text = f"{100 * st.mean:+.1f}" if signed else f"{100 * st.mean:.1f}"
    if st.std is not None:
        text += f" ± {100 * st.std:.1f}"
    return text


# ---------------------------------------------------------------------------------------------------------------
# building one table


class Footnotes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"

    def render(self) -> list[str]:
        return [f"[{i}] {n}" for i, n in enumerate(self.notes, 1)]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "|".join(("---:" if i >= align_right_from else "---") for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return lines


def dataset_names(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """File-name stem per (kind, root): the kind, or kind-2, kind-3 when one kind has several roots."""
    names: dict[tuple[str, str], str] = {}
    count: dict[str, int] = {}
    for r in rows:
        ident = (r["dataset"]["kind"], r["dataset"]["root"])
        if ident not in names:
            n = count.get(ident[0], 0) + 1
            count[ident[0]] = n
            names[ident] = ident[0] if n == 1 else f"{ident[0]}-{n}"
    return names


def build_table(
    rows: Sequence[Mapping[str, Any]], kind: str, root: str, name: str, group: str
) -> tuple[str, list[dict[str, Any]]] | None:
    """Markdown text and tidy CSV records for one dataset and metric group; None when no row has such metrics."""
    metric_list = METRIC_GROUPS[group]
    configs = group_configs(rows)
    present = [m for m in metric_list if any(m in (r.get("metrics") or {}) for c in configs for r in c.rows)]
    if not present:
        return None
    configs = [c for c in configs if any(m in (r.get("metrics") or {}) for r in c.rows for m in present)]
    notes = Footnotes()
    title = f"{name}: {group}-level metrics (%)"
    categories = sorted({cat for c in configs for cat in c.categories})
    lines = [
        f"# {title}",
        "",
        f"Dataset: {DATASET_NAMES.get(kind, kind)} layout (`{kind}`) at `{root}`, {len(categories)} class(es).",
        "",
    ]
    if any(c.random for c in configs):
        lines += [
            f"> **WARNING: {RANDOM_WEIGHTS_STAMP}.** Columns marked {RANDOM_MARK} use randomly initialised "
            "weights (pipeline smoke test).",
            "",
        ]
    records: list[dict[str, Any]] = []
    lines += _macro_section(configs, present, kind, root, notes, records)
    lines += _per_class_section(configs, present, categories, kind, root, records)
    lines += _legend_section(configs, notes)
    if kind in DATASET_NAMES:
        lines += _published_reference(kind)
    return "\n".join(lines).rstrip() + "\n", records


def _macro_section(
    configs: list[Config], present: list[str], kind: str, root: str, notes: Footnotes, records: list[dict[str, Any]]
) -> list[str]:
    """The macro-mean table, with published numbers and deltas where a configuration has a counterpart."""
    lines = ["## Macro mean over classes", ""]
    stats = {(c.key, m): macro_stat(c, m) for c in configs for m in present}
    pubs = {(c.key, m): compare(c.facts(), m) for c in configs for m in present} if kind in DATASET_NAMES else {}
    # published/Δ columns only for metrics where some configuration has a published counterpart
    pub_cols = [m for m in present if any(p.value is not None or p.reason for (k, mm), p in pubs.items() if mm == m)]
    header = ["configuration", "seeds", "classes"]
    for m in present:
        header.append(METRIC_NAMES[m])
        if m in pub_cols:
            header += ["published", "Δ"]
    body = []
    for c in configs:
        line = [c.label, "—" if c.seeds == [None] else str(len(c.seeds)), str(len(c.categories))]
        for m in present:
            st = stats[(c.key, m)]
            line.append(fmt(st) + (notes.ref(st.note) if st.note else ""))
            pub = pubs.get((c.key, m))
            diff = None
            if m in pub_cols:
                if pub.value is not None:
                    diff = None if st.mean is None else 100 * st.mean - pub.value
                    line += [f"{pub.value:.1f}", "—" if diff is None else f"{diff:+.1f}"]
                elif pub.reason:
                    line += [f"n/a{notes.ref(pub.reason)}", ""]
                else:
                    line += ["—", ""]
            records.append(_record(kind, root, c, MACRO, m, st, pub, diff))
        body.append(line)
    lines += _md_table(header, body, align_right_from=1)
    lines += [
        "",
        "- Percent. Few-shot cells are mean ± sample std (ddof=1) over reference-draw seeds (macro mean "
        "per seed, then over seeds); zero-shot is deterministic and runs once (seeds '—').",
    ]
    if pub_cols:
        lines.append(
            "- published: the paper's macro number when the protocol matches (Δ = vlmad − published); "
            "n/a with the reason when it does not; — when nothing is published for that configuration."
        )
    return lines + [""]


def _per_class_section(
    configs: list[Config],
    present: list[str],
    categories: list[str],
    kind: str,
    root: str,
    records: list[dict[str, Any]],
) -> list[str]:
    """One table per metric: a row per class, a column per configuration, the macro mean last."""
    lines = ["## Per class", ""]
    for m in present:
        lines += [f"### {METRIC_NAMES[m]}", ""]
        header = ["class"] + [c.label for c in configs]
        body = []
        for cat in categories:
            line = [cat]
            for c in configs:
                st = class_stat(c, cat, m)
                line.append(fmt(st))
                if st.mean is not None:
                    records.append(_record(kind, root, c, cat, m, st, None, None))
            body.append(line)
        body.append([f"**{MACRO}**"] + [f"**{fmt(macro_stat(c, m))}**" for c in configs])
        lines += _md_table(header, body)
        lines.append("")
    return lines


def _legend_section(configs: list[Config], notes: Footnotes) -> list[str]:
    """What each configuration is, the test images left out, and the footnotes."""
    lines = ["## Configurations", ""]
    for c in configs:
        lines.append(f"- **{c.label}**: {_describe(c)}")
    lines.append("")
    skipped = [
        (r["dataset"]["category"], r["seed"], s)
        for c in configs
        for r in c.rows
        for s in (r.get("skipped_images") or [])
    ]
    if skipped:
        lines += ["Skipped test images (unreadable; left out of the metrics):", ""]
        lines += [f"- {cat} (seed {seed}): `{s['path']}` — {s['reason']}" for cat, seed, s in skipped[:50]]
        if len(skipped) > 50:
            lines.append(f"- ... and {len(skipped) - 50} more (see results.jsonl)")
        lines.append("")
    if notes.notes:
        lines += ["Notes:", ""] + [f"{n}  " for n in notes.render()] + [""]
    return lines


def _published_reference(kind: str) -> list[str]:
    entries = entries_for(kind)
    if not entries:
        return []
    lines = [
        f"Published reference numbers for {DATASET_NAMES[kind]} (macro, %; shown next to a result only when "
        "the protocol matches):",
        "",
    ]
    keys = [m for m in (*IMAGE_METRICS, *PIXEL_METRICS) if any(m in e["metrics"] for e in entries)]
    body = [
        [e["label"], str(e["shots"])] + [f"{e['metrics'][m]:.1f}" if m in e["metrics"] else "" for m in keys]
        for e in entries
    ]
    lines += _md_table(["method", "shots", *[METRIC_NAMES[m] for m in keys]], body, align_right_from=1)
    from vlmad.bench.published import load_published

    sources = load_published()["sources"]
    used = sorted({e["source"] for e in entries})
    lines += ["", "Sources: " + "; ".join(sources[s] for s in used) + ".", ""]
    return lines


def _describe(c: Config) -> str:
    info, f = c.info, c.first
    proto = f.get("protocol", {})
    parts = [
        f"method `{f['method']}`",
        f"model `{info.get('model')}`",
        f"weights `{info.get('weights_id')}`",
        f"input {info.get('image_size')} px",
        f"prompts `{info.get('prompt_set')}`",
        f"{c.shots}-shot",
    ]
    extra = {
        k: v
        for k, v in info.items()
        if k
        not in ("method", "model", "weights_id", "image_size", "prompt_set", "shots", "transductive", "random_weights")
    }
    if extra:
        parts.append("settings " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
    if f.get("method_options"):
        parts.append("options " + ", ".join(f"{k}={v}" for k, v in sorted(f["method_options"].items())))
    ev = proto.get("eval_resolution")
    size = proto.get("eval_size")
    parts.append(f"eval {ev}" + (f" ({size[0]}x{size[1]})" if isinstance(size, list) else ""))
    parts.append(f"AUPRO {proto.get('aupro')}")
    if proto.get("limit"):
        parts.append(f"--limit {proto['limit']} ({proto.get('limit_policy')})")
    if c.shots:
        parts.append(f"seeds {', '.join(str(s) for s in c.seeds)}")
    if proto.get("transductive"):
        parts.append("**transductive** (uses test-set statistics)")
    if proto.get("protocol_forced"):
        parts.append(f"**protocol check forced** ({proto.get('check_protocol')})")
    elif proto.get("check_protocol"):
        parts.append(f"protocol {proto['check_protocol']}")
    if f.get("tags"):
        parts.append(f"tags {f['tags']}")
    if c.random:
        parts.append(f"**{RANDOM_WEIGHTS_STAMP}**")
    return "; ".join(parts)


def _record(
    kind: str, root: str, c: Config, category: str, metric: str, st: Stat, pub: Any, diff: float | None
) -> dict[str, Any]:
    return {
        "dataset": kind,
        "root": root,
        "configuration": c.label,
        "config_key": c.key,
        "method": c.first["method"],
        "label": c.first["method_label"],
        "shots": c.shots,
        "model": c.info.get("model"),
        "weights_id": c.info.get("weights_id"),
        "eval_resolution": c.first.get("protocol", {}).get("eval_resolution"),
        "category": category,
        "metric": metric,
        "mean_pct": None if st.mean is None else 100 * st.mean,
        "std_pct": None if st.std is None else 100 * st.std,
        "n_seeds": st.n,
        "n_classes": st.classes if category == MACRO else 1,
        "published_pct": None if pub is None else pub.value,
        "diff_pct": diff,
        "note": "; ".join(x for x in (st.note, None if pub is None else pub.reason) if x),
        "random_weights": c.random,
        "warning": RANDOM_WEIGHTS_STAMP if c.random else "",
    }


def _csv(records: Sequence[Mapping[str, Any]]) -> str:
    if not records:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# efficiency


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


def efficiency_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    lines = ["# Efficiency", ""]
    if any(r["random_weights"] for r in records):
        lines += [f"> Rows marked {RANDOM_MARK}: {RANDOM_WEIGHTS_STAMP} (timings and sizes are still real).", ""]
    header = [
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
    body = []
    for r in records:
        ms = _num(r["ms_per_image"]) + ("" if r["warm"] or r["ms_per_image"] is None else "*")
        params = (
            "—" if r["params_backbone_m"] is None else f"{r['params_backbone_m']:.2f}+{r['params_method_m'] or 0:.2f}"
        )
        text = _num(r["text_setup_s"], 2) + (" (cache hit)" if r["text_cache"] == "hit" else "")
        body.append(
            [
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
        )
    lines += _md_table(header, body, align_right_from=2)
    lines += [
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
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# writing everything


def write_reports(run_dir: str | Path) -> list[Path]:
    """(Re)write every table of a run folder from its results.jsonl; returns the files written."""
    out = Path(run_dir)
    rows = load_results(out)
    ok = [r for r in rows if r.get("status") == "ok"]
    written: list[Path] = []
    tables_dir = out / "tables"
    sections: list[str] = []
    for (kind, root), name in dataset_names(ok).items():
        ds_rows = [r for r in ok if r["dataset"]["kind"] == kind and r["dataset"]["root"] == root]
        for group in METRIC_GROUPS:
            built = build_table(ds_rows, kind, root, name, group)
            if built is None:
                continue
            text, records = built
            md, cs = tables_dir / f"{name}_{group}.md", tables_dir / f"{name}_{group}.csv"
            atomic_write_text(md, text)
            atomic_write_text(cs, _csv(records))
            written += [md, cs]
            sections.append(text)
    eff = efficiency_records(ok)
    eff_md = efficiency_markdown(eff)
    if eff:
        atomic_write_text(out / "efficiency.md", eff_md)
        atomic_write_text(out / "efficiency.csv", _csv(eff))
        written += [out / "efficiency.md", out / "efficiency.csv"]
    summary = out / "summary.md"
    atomic_write_text(summary, _summary(out, rows, ok, sections, eff_md if eff else ""))
    written.append(summary)
    return written


def _summary(
    out: Path, rows: Sequence[Mapping[str, Any]], ok: Sequence[Mapping[str, Any]], sections: list[str], eff_md: str
) -> str:
    lines = ["# vlmad benchmark summary", ""]
    if any(r.get("random_weights") for r in ok):
        lines += [f"> **WARNING: {RANDOM_WEIGHTS_STAMP}** for the rows marked {RANDOM_MARK}.", ""]
    lines += fingerprint_warning(ok)
    try:
        latest = json.loads((out / "run.json").read_text()).get("latest", {})
    except (OSError, ValueError):
        latest = {}
    env = latest.get("environment", {})
    failed = [r for r in rows if r.get("status") != "ok"]
    lines += [
        f"- results: `{out / 'results.jsonl'}` ({len(ok)} row(s) ok, {len(failed)} refused/failed)",
        f"- tables: `{out / 'tables'}`; efficiency: `{out / 'efficiency.md'}`",
    ]
    if env:
        lines.append(
            f"- environment: vlmad {env.get('vlmad')}, torch {env.get('torch')}, open_clip "
            f"{env.get('open_clip')}, device {env.get('device')}, {env.get('torch_threads')} torch threads"
        )
    if latest.get("argv"):
        lines.append(f"- last command: `{shlex.join(str(a) for a in latest['argv'])}`")
    lines.append("")
    if failed:
        lines += ["## Rows not computed", ""]
        for r in failed:
            seed = "" if r.get("seed") is None else f" seed {r['seed']}"
            lines.append(
                f"- **{r.get('status')}** {r['method_label']} {r['shots']}-shot{seed} · "
                f"{r['dataset']['kind']}/{r['dataset']['category']}: {r.get('reason')}"
                + (f" (hint: {r['hint']})" if r.get("hint") else "")
            )
        lines += [
            "",
            "Rerun with `--retry-failed` to try these rows again (`--force-protocol` to override a "
            "refused protocol check; forced rows are labelled).",
            "",
        ]
    for text in sections:
        lines += ["---", "", _demote(text), ""]
    if eff_md:
        lines += ["---", "", _demote(eff_md)]
    return "\n".join(lines).rstrip() + "\n"


def fingerprint_warning(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines warning that a run folder mixes rows computed by different code (resumed after a change)."""
    from vlmad.provenance import mixed_fingerprints

    seen = mixed_fingerprints(list(rows))
    if not seen:
        return []
    return [
        f"> **WARNING: rows from {len(seen)} code versions** ({', '.join(seen)}): this folder was resumed "
        "after a code change; numbers of different versions sit side by side (rerun into a new --out to "
        "recompute them all).",
        "",
    ]


def _demote(markdown: str) -> str:
    return "\n".join(("#" + line) if line.startswith("#") else line for line in markdown.splitlines())
