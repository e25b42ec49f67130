"""Ablation sections: the prompt-ensemble ablation and every other study axis (window scales, stages, resolution,
backbone): each variant against its default configuration, deltas paired by reference seed."""

from __future__ import annotations

from typing import Any

from vlmad.bench.tables import METRIC_NAMES, Config, Stat, fmt, group_configs, macro_stat
from vlmad.report import figures as F
from vlmad.report.context import ABLATION_METRICS, DatasetBlock, ReportContext, delta_stat, pct, value_cell
from vlmad.report.html import Cell, Doc


def _ablation_groups(ctx: ReportContext, axis: str) -> list[dict[str, Any]]:
    """Per (dataset, base method, shots): the default config and the variants' configs with their deltas."""
    groups: dict[tuple, dict[str, Any]] = {}
    for ds in ctx.datasets:
        rows = [r for r in ds.rows if (r.get("tags") or {}).get("ablation") == axis]
        if not rows:
            continue
        for c in group_configs(rows):
            study = (c.first.get("method_spec") or {}).get("study") or {}
            base = study.get("base_label") or c.first["method_label"]
            proto = c.first.get("protocol") or {}
            default = next(
                (
                    d
                    for d in ds.configs
                    if d.first["method_label"] == base
                    and d.shots == c.shots
                    and (d.first.get("protocol") or {}).get("limit") == proto.get("limit")
                    and (d.first.get("protocol") or {}).get("eval_resolution") == proto.get("eval_resolution")
                ),
                None,
            )
            key = (ds.name, base, c.shots)
            g = groups.setdefault(
                key, {"dataset": ds, "base": base, "shots": c.shots, "default": default, "variants": []}
            )
            g["variants"].append((study.get("variant") or c.first["method_label"], study.get("detail") or "", c))
    return list(groups.values())


def _lead_cells(ds: DatasetBlock, g: dict[str, Any], variant: str, detail: str, seeds: list[Any]) -> list[Cell]:
    """The descriptive cells of one ablation line (dataset, method, K, variant, what, seeds)."""
    return [
        Cell(ds.title),
        Cell(g["base"]),
        Cell(str(g["shots"]), num=True),
        Cell(variant),
        Cell(detail, wrap=True),
        Cell("—" if seeds == [None] else str(len(seeds)), num=True),
    ]


def _variant_line(
    ctx: ReportContext, axis: str, g: dict[str, Any], entry: tuple[str, str, Config], metrics: list[str], deltas: dict
) -> list[Cell]:
    """One variant's cells (value and Δ per metric); appends its JSON record and its Δ bars to ``deltas``."""
    variant, detail, c = entry
    ds, default = g["dataset"], g["default"]
    line = _lead_cells(ds, g, variant, detail, c.seeds)
    record = {
        "axis": axis,
        "dataset": ds.name,
        "method": g["base"],
        "shots": g["shots"],
        "variant": variant,
        "config": c.key,
        "default_config": None if default is None else default.key,
    }
    deltas["labels"].append(f"{ds.name} · {g['base']} · K={g['shots']} · {variant}")
    for m in metrics:
        st = macro_stat(c, m)
        d = delta_stat(c, default, m) if default is not None else Stat(None)
        line += [
            value_cell(c, ds, m, "macro", st),
            Cell(fmt(d, signed=True), {"data-delta": repr(d.mean), "data-metric": m, "data-config": c.key}, num=True),
        ]
        record[m] = st.mean
        record[f"delta_{m}"] = d.mean
        record[f"delta_{m}_std"] = d.std
        deltas[m][0].append(pct(d.mean))
        deltas[m][1].append(pct(d.std))
    ctx.data.setdefault("ablations", []).append(record)
    return line


def _ablation_table(sec: Doc, ctx: ReportContext, axis: str, title: str) -> bool:
    """One axis's table (default and variants, value and Δ per metric), its explanation and Δ bars; False when
    the run has no row of that axis."""
    from vlmad.study.axes import AXES

    groups = _ablation_groups(ctx, axis)
    if not groups:
        return False
    metrics = [m for m in ABLATION_METRICS if any(m in g["dataset"].metrics for g in groups)]
    header = ["dataset", "method", "K", "variant", "what", "seeds"]
    for m in metrics:
        header += [METRIC_NAMES[m], f"Δ {METRIC_NAMES[m]}"]
    body = []
    deltas: dict[str, Any] = {"labels": [], **{m: ([], []) for m in metrics}}
    ctx.data.setdefault("ablations", [])
    for g in groups:
        ds, default = g["dataset"], g["default"]
        if default is not None:
            line = _lead_cells(ds, g, "**default**", _default_detail(axis, default), default.seeds)
            for m in metrics:
                line += [value_cell(default, ds, m, "macro", macro_stat(default, m)), Cell("—", num=True)]
            body.append(line)
        for entry in g["variants"]:
            body.append(_variant_line(ctx, axis, g, entry, metrics, deltas))
    sec.table(header, body, ident=f"ablation-table-{axis}")
    sec.para(
        "Δ = variant − default in percentage points, paired by reference seed (zero-shot: one deterministic "
        "run, no spread); ± is the sample std of the per-seed deltas. Varied: "
        + AXES[axis].description
        + "."
        + (f" Note: {AXES[axis].note}." if AXES[axis].note else "")
    )
    if deltas["labels"] and metrics:
        png = F.delta_bars(
            deltas["labels"],
            [(METRIC_NAMES[m], deltas[m][0], deltas[m][1]) for m in metrics],
            f"{title}: change vs the default",
            ctx.random,
        )
        sec.figure(f"ablation-{axis}", png, f"{title}: Δ vs the default configuration (error bars: std over seeds).")
    if any(g["default"] is None for g in groups):
        sec.note("Some variants have no default configuration in this run (the baseline rows are missing).", "warn")
    return True


def _default_detail(axis: str, c: Config) -> str:
    """What the default configuration uses on ``axis`` (the "what" cell of its line)."""
    info = c.info
    if axis == "prompts":
        from vlmad.prompts import PROMPT_SETS

        ps = PROMPT_SETS.get(str(info.get("prompt_set")))
        if ps is not None:
            from vlmad.study.axes import _count

            return f"{ps.name}: {_count(ps)}"
        return f"prompt set {info.get('prompt_set')}"
    if axis == "window_scales":
        parts = [f"{s}x{s} windows" for s in info.get("scales") or []]
        return "harmonic mean of " + " and ".join(parts + (["the image score"] if info.get("image_scale") else []))
    if axis == "stages":
        return "blocks " + ", ".join(str(s) for s in info.get("stages") or [])
    if axis == "resolution":
        return f"{info.get('image_size')} px"
    if axis == "backbone":
        return str(info.get("model"))
    return ""


def section_ablations(doc: Doc, ctx: ReportContext) -> None:
    """The prompt-ablation section, then one table per other axis that has rows."""
    from vlmad.study.axes import AXES

    sec = doc.section("prompt-ablation", "Prompt-ensemble ablation")
    sec.para(
        "Full compositional prompt ensemble (state words x templates) vs state words only, templates only, a "
        "single prompt and user-defined sets."
    )
    if not _ablation_table(sec, ctx, "prompts", "Prompt ensemble"):
        sec.note(
            "No prompt ablation in this study (run the `prompt-ablation` preset, or add `ablations: prompts:` "
            "to the spec).",
            "empty",
        )
    sec = doc.section("ablations", "Other ablations")
    found = False
    for axis in [a for a in AXES if a != "prompts"]:
        sub = Doc()
        if _ablation_table(sub, ctx, axis, AXES[axis].title):
            sec.heading(AXES[axis].title, 3, ident=f"ablation-{axis}")
            sec.blocks.extend(sub.blocks)
            found = True
    if not found:
        sec.note("No other ablation in this study (window scales, APRIL-GAN stages, resolution, backbone).", "empty")
