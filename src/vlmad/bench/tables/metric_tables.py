"""One metric table per dataset and metric group (image, pixel): the macro-mean table with published numbers,
per-class tables, the configurations legend, the published reference numbers, and the tidy CSV records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmad.bench.published import DATASET_NAMES, compare, entries_for
from vlmad.bench.tables.aggregate import Stat, class_stat, fmt, macro_stat
from vlmad.bench.tables.configs import (
    IMAGE_METRICS,
    MACRO,
    METRIC_GROUPS,
    METRIC_NAMES,
    PIXEL_METRICS,
    RANDOM_MARK,
    Config,
    describe,
    group_configs,
)
from vlmad.bench.tables.markdown import Footnotes, md_table
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP


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
    lines += md_table(header, body, align_right_from=1)
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
        lines += md_table(header, body)
        lines.append("")
    return lines


def _legend_section(configs: list[Config], notes: Footnotes) -> list[str]:
    """What each configuration is, the test images left out, and the footnotes."""
    lines = ["## Configurations", ""]
    for c in configs:
        lines.append(f"- **{c.label}**: {describe(c)}")
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
    lines += md_table(["method", "shots", *[METRIC_NAMES[m] for m in keys]], body, align_right_from=1)
    from vlmad.bench.published import load_published

    sources = load_published()["sources"]
    used = sorted({e["source"] for e in entries})
    lines += ["", "Sources: " + "; ".join(sources[s] for s in used) + ".", ""]
    return lines


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
