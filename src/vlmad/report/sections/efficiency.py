"""Accuracy vs speed: one Pareto plot of macro image AUROC against ms/image per hardware."""

from __future__ import annotations

from vlmad.bench.stats import num as _num
from vlmad.bench.tables import METRIC_NAMES, macro_stat
from vlmad.report import figures as F
from vlmad.report.context import ReportContext, config_ms, hardware_label, is_main, mode_of
from vlmad.report.html import Cell, Doc


def section_efficiency(doc: Doc, ctx: ReportContext) -> None:
    """Per hardware a Pareto plot of macro image AUROC vs ms/image, and the table of every configuration."""
    sec = doc.section("efficiency", "Accuracy vs speed")
    sec.para(
        "Each point is one configuration (main grid: blue dots, ablation variants: grey squares): macro image "
        "AUROC against the median `predict` time per image (warm batches; loading excluded). The red step line "
        "is the Pareto front: nothing else is both faster and more accurate. One figure per hardware."
    )
    metric = "image_auroc"
    points: dict[str, dict[str, list[F.ParetoPoint]]] = {}
    table = []
    for ds in ctx.datasets:
        for c in ds.all_configs:
            ms = config_ms(c)
            st = macro_stat(c, metric)
            if ms is None or st.mean is None:
                continue
            hw = mode_of([hardware_label(r, ctx.invocations) for r in c.rows]) or "unknown"
            points.setdefault(hw, {}).setdefault(ds.title, []).append(
                F.ParetoPoint(c.label, ms, 100 * st.mean, main=is_main(c.first))
            )
    if not points:
        sec.note("No timing with image-level metrics in this run.", "empty")
        return
    for i, (hw, per_ds) in enumerate(points.items()):
        panels = []
        for name, pts in per_ds.items():
            for p, f in zip(pts, F.pareto_front([(p.ms, p.value) for p in pts]), strict=True):
                p.front = f
                table.append(
                    [
                        Cell(hw),
                        Cell(name),
                        Cell(p.label),
                        Cell(_num(p.ms, 2), num=True),
                        Cell(_num(p.value), num=True),
                        Cell("yes" if f else ""),
                    ]
                )
            panels.append((name, pts))
        png = F.pareto_plot(panels, hw, METRIC_NAMES[metric], ctx.random)
        sec.figure(f"pareto-{i}", png, f"{METRIC_NAMES[metric]} vs ms/image on {hw}.")
    det = sec.details("All configurations (latency and accuracy)")
    det.table(["hardware", "dataset", "configuration", "ms/image", METRIC_NAMES[metric], "Pareto front"], table)
    if (ctx.run_dir / "efficiency.md").exists():
        sec.para("Memory, FLOPs, parameters and set-up times: `efficiency.md` in the run folder.")
