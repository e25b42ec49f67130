"""The report's first two sections: the overview (what ran, where, with which commands) and "which method for
me?" (sentences derived from the measured numbers by :mod:`vlmad.report.recommend`)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from vlmad.bench.tables import macro_stat
from vlmad.report.context import ReportContext, config_ms, hardware_label, mode_of, pct
from vlmad.report.html import Doc
from vlmad.report.recommend import Entry, recommend
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP


def _method_options(m: Mapping[str, Any]) -> str:
    kw = m.get("kwargs") or {}
    return f" ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()))})" if kw else ""


def _run_items(ctx: ReportContext) -> list[str]:
    """Row counts, the run folder and one line per dataset."""
    failed = [r for r in ctx.rows if r.get("status") != "ok"]
    refused = [r for r in failed if r.get("status") == "refused"]
    items = [
        f"**{len(ctx.ok)}** result row(s) ok, {len(refused)} refused by a protocol check, "
        f"{len(failed) - len(refused)} failed (see the last section).",
        f"Run folder: `{ctx.run_dir}` (rows in `results.jsonl`, per-image scores in `scores/`, benchmark tables "
        "in `tables/` and `summary.md`).",
    ]
    for ds in ctx.datasets:
        cats = sorted({r["dataset"]["category"] for r in ds.rows})
        items.append(
            f"{ds.title}: {len(cats)} class(es) ({', '.join(cats[:20])}{' …' if len(cats) > 20 else ''}) "
            f"at `{ds.root}`."
        )
    return items


def _study_items(ctx: ReportContext) -> list[str]:
    """Methods, grid and the last commands of study.json, and the environment of the last invocation."""
    study = ctx.study or {}
    spec = study.get("spec") or {}
    items = []
    methods = study.get("methods") or []
    if methods:
        items.append(
            "Methods: " + "; ".join(f"**{m['label']}** = `{m['method']}`{_method_options(m)}" for m in methods) + "."
        )
    if spec:
        items.append(
            f"Grid: shots {spec.get('shots')}, seeds {spec.get('seeds')}, --limit {spec.get('limit')}, "
            f"evaluation at {spec.get('eval_resolution')} resolution, AUPRO {spec.get('aupro')}; ablations: "
            + (", ".join(a["axis"] for a in spec.get("ablations") or []) or "none")
            + "."
        )
    for inv in (study.get("invocations") or [])[-3:]:
        if inv.get("argv"):
            items.append(
                f"Command ({inv.get('started', '')}): `{shlex.join(str(a) for a in inv['argv'])}` — "
                f"{inv.get('computed', 0)} row(s) computed."
            )
    env = (ctx.invocations[-1].get("environment") if ctx.invocations else None) or {}
    if env:
        items.append(
            f"Environment: vlmad {env.get('vlmad')}, torch {env.get('torch')}, open_clip "
            f"{env.get('open_clip')}, python {env.get('python')}, {env.get('platform')}."
        )
    return items


def _overview_notes(sec: Doc, ctx: ReportContext) -> None:
    """The last invocation's notes and failed ablation phases, and the random-weights warning."""
    invocations = (ctx.study or {}).get("invocations") or []
    last = invocations[-1] if invocations else {}
    for note in last.get("notes") or []:
        sec.note(note)
    for failed in last.get("failed_phases") or []:
        sec.note(
            f"Ablation phase **{failed['phase']}** could not run: {failed['error']}"
            + (f" ({failed['hint']})" if failed.get("hint") else ""),
            "warn",
        )
    if ctx.random:
        sec.note(
            f"**{RANDOM_WEIGHTS_STAMP}.** At least one configuration ran with randomly initialised weights "
            "(marked †): this report tests the pipeline, not the methods.",
            "warn",
        )


def section_overview(doc: Doc, ctx: ReportContext) -> None:
    """The study's description, what ran and where, and the warnings of the last invocation."""
    sec = doc.section("overview", "Overview")
    spec = (ctx.study or {}).get("spec") or {}
    if spec.get("description"):
        sec.para(spec["description"])
    sec.bullets(_run_items(ctx) + _study_items(ctx))
    _overview_notes(sec, ctx)


def entries(ctx: ReportContext) -> list[Entry]:
    """One recommendation entry per main-grid configuration (macro means in percent, latency, hardware)."""
    out: list[Entry] = []
    for ds in ctx.datasets:
        for c in ds.configs:
            metrics = {m: (pct(macro_stat(c, m).mean), pct(macro_stat(c, m).std)) for m in ds.metrics}
            hw = mode_of([hardware_label(r, ctx.invocations) for r in c.rows])
            out.append(Entry(ds.title, c.label, c.first["method_label"], c.shots, metrics, config_ms(c), hw, c.random))
    return out


def section_recommend(doc: Doc, ctx: ReportContext) -> None:
    """The recommendation sentences, grouped by dataset."""
    sec = doc.section("recommend", "Which method for me?")
    recs = recommend(entries(ctx))
    sec.para(
        "Derived from the measured numbers of this run (main grid; macro means, ties = lead smaller than the "
        "seed spread or 0.5 pt). Change the data or the grid and these sentences change with it."
    )
    if ctx.random:
        sec.note(f"{RANDOM_WEIGHTS_STAMP}: the choices below are mechanical and say nothing about the methods.", "warn")
    if not recs:
        sec.note("No configuration with image-level metrics: nothing to recommend.", "empty")
        return
    by_ds: dict[str, list[str]] = {}
    for r in recs:
        by_ds.setdefault(r.dataset, []).append(r.text)
    for ds, texts in by_ds.items():
        sec.heading(ds, 3)
        sec.bullets(texts)
    ctx.data["recommendations"] = [{"topic": r.topic, "dataset": r.dataset, "text": r.text, **r.numbers} for r in recs]
