"""Published vs measured: the paper's number next to ours, with Δ only when the protocol matches
(:func:`vlmad.bench.published.compare` says why not otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmad.bench.published import compare
from vlmad.bench.tables import METRIC_NAMES, Config, fmt, macro_stat
from vlmad.report.context import ALL_METRICS, DatasetBlock, ReportContext
from vlmad.report.html import Cell, Doc


def _config_cells(
    ds: DatasetBlock, c: Config, entry: Mapping[str, Any], data: list[dict[str, Any]]
) -> tuple[dict[str, Cell], list[str]]:
    """The measured / published cell per metric of one configuration, and the reasons it is not comparable."""
    facts = c.facts()
    cells, reasons = {}, []
    for m in ds.metrics:
        if m not in entry["metrics"]:
            continue
        pub = compare(facts, m)
        st = macro_stat(c, m)
        published = float(entry["metrics"][m])
        diff = None if pub.value is None or st.mean is None else 100 * st.mean - pub.value
        text = f"{fmt(st)} / {published:.1f}" + ("" if diff is None else f" ({diff:+.1f})")
        attrs = {"data-config": c.key, "data-metric": m, "data-category": "macro", "data-published": repr(published)}
        if st.mean is not None:
            attrs["data-mean"] = repr(st.mean)
        cells[m] = Cell(text, attrs, num=True)
        if pub.reason and pub.reason not in reasons:
            reasons.append(pub.reason)
        data.append(
            {
                "dataset": ds.name,
                "config": c.key,
                "metric": m,
                "measured": st.mean,
                "published": published,
                "comparable": pub.value is not None,
                "reason": pub.reason,
            }
        )
    return cells, reasons


def _dataset_table(sec: Doc, ds: DatasetBlock, data: list[dict[str, Any]]) -> bool:
    """The published-vs-measured table of one dataset; False when no configuration has a published number."""
    from vlmad.bench.published import find_entry

    per_cfg = []
    for c in ds.configs:
        entry = find_entry(c.first["method"], ds.kind, c.shots)
        if entry is None:
            continue
        cells, reasons = _config_cells(ds, c, entry, data)
        if cells:
            per_cfg.append((c, entry, cells, reasons))
    if not per_cfg:
        return False
    metrics_used = [m for m in ALL_METRICS if any(m in cells for _, _, cells, _ in per_cfg)]
    lines = [
        [Cell(c.label), Cell(entry["label"])]
        + [cells.get(m, Cell("—", num=True)) for m in metrics_used]
        + [Cell("; ".join(reasons) or "comparable", wrap=True)]
        for c, entry, cells, reasons in per_cfg
    ]
    sec.heading(ds.title, 3)
    sec.table(
        ["configuration", "published as"] + [METRIC_NAMES[m] for m in metrics_used] + ["why not comparable"], lines
    )
    return True


def section_published(doc: Doc, ctx: ReportContext) -> None:
    """One table per dataset that has published numbers for its configurations."""
    sec = doc.section("published", "Published vs measured")
    sec.para(
        "Cells: measured / published (Δ = measured − published, in points). The paper's number is always "
        "shown for reference; Δ only when the protocol matches (weights, input size, default settings, all "
        "official classes, every image, no --limit, same AUPRO variant), otherwise the reason is given."
    )
    data = ctx.data.setdefault("published", [])
    any_table = False
    for ds in ctx.datasets:
        any_table = _dataset_table(sec, ds, data) or any_table
    if not any_table:
        sec.note("No published number exists for these methods, datasets and shot counts.", "empty")
