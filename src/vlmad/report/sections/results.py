"""Results per dataset (macro table, per-category bars, per-class tables) and the zero-/few-shot curves."""

from __future__ import annotations

from typing import Any

from vlmad.bench.tables import IMAGE_METRICS, METRIC_NAMES, PIXEL_METRICS, Config, class_stat, macro_stat
from vlmad.report import figures as F
from vlmad.report.context import CURVE_METRICS, DatasetBlock, ReportContext, pct, value_cell
from vlmad.report.html import Cell, Doc
from vlmad.report.zero_shot import ZERO_SHOT_ONLY, zero_shot_only


def _config_record(c: Config, ds: DatasetBlock) -> dict[str, Any]:
    """One configuration's macro and per-class means for the embedded JSON."""
    return {
        "key": c.key,
        "label": c.label,
        "dataset": ds.name,
        "method_label": c.first["method_label"],
        "shots": c.shots,
        "seeds": c.seeds,
        "row_keys": [r["row_key"] for r in c.rows],
        "macro": {m: macro_stat(c, m).mean for m in ds.metrics},
        "classes": {cat: {m: class_stat(c, cat, m).mean for m in ds.metrics} for cat in c.categories},
    }


def _macro_table(sec: Doc, ctx: ReportContext, ds: DatasetBlock) -> None:
    """The dataset's macro-mean table (and each configuration's record for the embedded JSON)."""
    header = ["configuration", "seeds", "classes"] + [METRIC_NAMES[m] for m in ds.metrics]
    body = []
    for c in ds.configs:
        line = [
            Cell(c.label),
            Cell("—" if c.seeds == [None] else str(len(c.seeds)), num=True),
            Cell(str(len(c.categories)), num=True),
        ]
        line += [value_cell(c, ds, m, "macro", macro_stat(c, m)) for m in ds.metrics]
        body.append(line)
        ctx.data.setdefault("configs", []).append(_config_record(c, ds))
    sec.table(header, body, ident=f"macro-{ds.name}")
    sec.para(
        "Percent; macro mean over classes per seed, then mean ± sample std over reference seeds (zero-shot "
        "runs once: no ±). The same numbers as `tables/" + ds.name + "_{image,pixel}.md`."
    )


def _category_figures(sec: Doc, ctx: ReportContext, ds: DatasetBlock, categories: list[str]) -> None:
    """One bar figure per metric group (image, pixel): every metric of the group per category and macro mean."""
    for group, group_metrics in (("image", IMAGE_METRICS), ("pixel", PIXEL_METRICS)):
        panels = []
        for m in [x for x in group_metrics if x in ds.metrics]:
            series = []
            for c in ds.configs:
                stats = [class_stat(c, cat, m) for cat in categories] + [macro_stat(c, m)]
                series.append(F.Series(c.label, [pct(s.mean) for s in stats], [pct(s.std) for s in stats]))
            panels.append((METRIC_NAMES[m], series))
        if not panels:
            continue
        png = F.category_bars(
            [*categories, "macro mean"], panels, f"{ds.title}: {group}-level metrics per category", ctx.random
        )
        sec.figure(
            f"bars-{ds.name}-{group}",
            png,
            f"{ds.title}: {group}-level metrics "
            f"({', '.join(p[0] for p in panels)}) per category and macro mean; error bars: std over seeds.",
        )


def _per_class_tables(sec: Doc, ds: DatasetBlock, categories: list[str]) -> None:
    """Per metric, a class x configuration table (collapsed)."""
    det = sec.details(f"Per-class tables ({ds.title})")
    for m in ds.metrics:
        det.heading(METRIC_NAMES[m], 4)
        body = []
        for cat in categories:
            body.append([Cell(cat)] + [value_cell(c, ds, m, cat, class_stat(c, cat, m)) for c in ds.configs])
        body.append([Cell("**macro mean**")] + [value_cell(c, ds, m, "macro", macro_stat(c, m)) for c in ds.configs])
        det.table(["class"] + [c.label for c in ds.configs], body)


def section_results(doc: Doc, ctx: ReportContext) -> None:
    """Per dataset: the macro table, per-category bar figures and per-class tables of the main grid."""
    sec = doc.section("results", "Results per dataset")
    ctx.data.setdefault("configs", [])
    if not ctx.datasets:
        sec.note("No successful result row in this run.", "empty")
        return
    for ds in ctx.datasets:
        sec.heading(ds.title, 3, ident=f"results-{ds.name}")
        if not ds.configs:
            sec.note("Only ablation rows for this dataset (no main-grid configuration).", "empty")
            continue
        _macro_table(sec, ctx, ds)
        categories = sorted({cat for c in ds.configs for cat in c.categories})
        _category_figures(sec, ctx, ds, categories)
        _per_class_tables(sec, ds, categories)


def section_curves(doc: Doc, ctx: ReportContext) -> None:
    """Per dataset, macro metrics against the number of references K, one line per method."""
    sec = doc.section("shot-curves", "Zero- and few-shot curves")
    any_fig = False
    for ds in ctx.datasets:
        if not ds.configs:
            continue
        by_method: dict[str, list[Config]] = {}
        for c in ds.configs:
            by_method.setdefault(c.first["method_label"], []).append(c)
        panels = []
        only = zero_shot_only((c.first["method_label"], c.shots) for c in ds.configs)
        for m in [x for x in CURVE_METRICS if x in ds.metrics]:
            series = []
            for label, cs in by_method.items():
                cs = sorted(cs, key=lambda c: c.shots)
                stats = [macro_stat(c, m) for c in cs]
                series.append(
                    F.Series(
                        label + (f" ({ZERO_SHOT_ONLY})" if label in only else "") + (" †" if cs[0].random else ""),
                        [pct(s.mean) for s in stats],
                        [pct(s.std) for s in stats],
                        [c.shots for c in cs],
                    )
                )
            panels.append((METRIC_NAMES[m], series))
        if panels:
            shots = sorted({c.shots for c in ds.configs})
            png = F.shot_curves(panels, f"{ds.title}: metric vs number of normal references K", ctx.random)
            sec.figure(
                f"curves-{ds.name}",
                png,
                f"{ds.title}: macro metric vs K (K = {', '.join(map(str, shots))}); "
                "error bars: std over reference seeds.",
            )
            if only:
                sec.para(f"{', '.join(sorted(only))}: {ZERO_SHOT_ONLY} (no few-shot mode), a single point at K = 0.")
            any_fig = True
    if not any_fig:
        sec.note("No main-grid configuration: no curves.", "empty")
