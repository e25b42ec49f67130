"""The study report: ``report.html`` (one self-contained file) and ``report.md`` (+ ``report_files/``) of a run folder.

Works on any folder written by ``vlmad study`` or ``vlmad benchmark``: everything is derived from ``results.jsonl``
(rows), the per-image score files, ``deploy/**/*.json`` and, when present, ``study.json`` / ``run.json`` (titles,
commands, method specs for the gallery). Every number is computed by the same code as the benchmark tables
(:mod:`vlmad.bench.tables`: macro mean over classes per seed, then mean ± sample std over seeds), and every value
cell carries ``data-config``/``data-metric``/``data-category``/``data-mean`` attributes; the same values are
embedded as JSON (``<script id="vlmad-report-data">``).

Sections: overview, which method for me, results per dataset (macro table, per-category bars for each metric,
per-class tables), zero-/few-shot curves, efficiency (accuracy vs ms/image Pareto plot per hardware),
cross-domain matrix (APRIL-GAN heads trained on one dataset, evaluated on another), prompt-ablation table,
other ablations (delta vs the default, spread over seeds), published vs measured, deployment thresholds,
heatmap gallery, configurations and rows not computed.
"""

from __future__ import annotations

import io
import json
import math
import shlex
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.bench.protocol import keyed_kwargs, relpath
from vlmad.bench.published import DATASET_NAMES, compare
from vlmad.bench.results import load_results, read_scores
from vlmad.bench.stats import median as _median
from vlmad.bench.stats import num as _num
from vlmad.bench.tables import (
    IMAGE_METRICS,
    METRIC_NAMES,
    PIXEL_METRICS,
    Config,
    Stat,
    class_stat,
    dataset_names,
    fmt,
    group_configs,
    macro_stat,
)
from vlmad.report import figures as F
from vlmad.report.html import Cell, Doc, render_html, render_markdown
from vlmad.report.recommend import Entry, recommend
from vlmad.report.zero_shot import ZERO_SHOT_ONLY, training_origin, zero_shot_only
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.fileio import atomic_write_text
from vlmad_runtime.version import __version__

HTML_FILE = "report.html"
MD_FILE = "report.md"
ASSETS_DIR = "report_files"
ALL_METRICS = (*IMAGE_METRICS, *PIXEL_METRICS)
CURVE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")
ABLATION_METRICS = ("image_auroc", "pixel_auroc", "aupro")
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _rate(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _is_main(row: Mapping[str, Any]) -> bool:
    return not (row.get("tags") or {})


def _metrics_present(configs: Sequence[Config]) -> list[str]:
    return [m for m in ALL_METRICS if any(m in (r.get("metrics") or {}) for c in configs for r in c.rows)]


def _config_ms(c: Config) -> float | None:
    effs = [r.get("efficiency") or {} for r in c.rows]
    warm = [e for e in effs if e.get("warm")]
    return _median([e.get("ms_per_image") for e in (warm or effs)])


def _per_seed_macro(c: Config, metric: str, categories: Sequence[str]) -> dict[Any, float]:
    cells = c.cell_metrics()
    out: dict[Any, float] = {}
    for s in c.seeds:
        vals = [cells[(cat, s)][metric] for cat in categories if metric in cells.get((cat, s), {})]
        if len(vals) == len(categories) and vals:
            out[s] = math.fsum(vals) / len(vals)
    return out


def delta_stat(variant: Config, default: Config, metric: str) -> Stat:
    """Seed-paired delta of macro means (over the classes both have): mean ± sample std over common seeds."""
    cats = sorted(set(variant.categories) & set(default.categories))
    a, b = _per_seed_macro(variant, metric, cats), _per_seed_macro(default, metric, cats)
    if default.seeds == [None] and variant.seeds != [None]:
        diffs = [a[s] - b[None] for s in a if None in b]
    else:
        diffs = [a[s] - b[s] for s in a if s in b]
    if not diffs:
        return Stat(None)
    mean = math.fsum(diffs) / len(diffs)
    return Stat(mean, statistics.stdev(diffs) if len(diffs) > 1 else None, len(diffs), values=diffs)


def _run_invocations(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((run_dir / "run.json").read_text()).get("invocations") or [])
    except (OSError, ValueError):
        return []


def hardware_label(row: Mapping[str, Any], invocations: Sequence[Mapping[str, Any]]) -> str:
    """The device a row ran on, named from the environment of the invocation that computed it."""
    device = str((row.get("efficiency") or {}).get("device") or (row.get("run") or {}).get("device") or "cpu")
    finished = row.get("finished_at") or ""
    env: Mapping[str, Any] = {}
    for inv in invocations:
        if inv.get("started", "") <= finished and (not inv.get("finished") or finished <= inv["finished"]):
            env = inv.get("environment") or {}
    if not env and invocations:
        env = invocations[-1].get("environment") or {}
    if device.startswith("cuda"):
        return str(env.get("cuda_device_name") or device)
    threads = env.get("torch_threads")
    cores = env.get("cpu_count")
    extra = ", ".join(x for x in (f"{cores} cores" if cores else "", f"{threads} threads" if threads else "") if x)
    return f"CPU ({extra})" if extra else "CPU"


def _mode(values: Sequence[str]) -> str | None:
    return max(set(values), key=values.count) if values else None


@dataclass
class DatasetBlock:
    kind: str
    root: str
    name: str
    title: str
    rows: list[dict[str, Any]]
    configs: list[Config] = field(default_factory=list)  # main grid
    all_configs: list[Config] = field(default_factory=list)  # main + ablations
    metrics: list[str] = field(default_factory=list)


@dataclass
class ReportContext:
    run_dir: Path
    rows: list[dict[str, Any]]
    ok: list[dict[str, Any]]
    study: dict[str, Any] | None
    invocations: list[dict[str, Any]]
    random: bool
    datasets: list[DatasetBlock]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _collect(run_dir: Path) -> ReportContext:
    from vlmad.study.files import load_study_file

    rows = load_results(run_dir)
    ok = [r for r in rows if r.get("status") == "ok"]
    blocks: list[DatasetBlock] = []
    for (kind, root), name in dataset_names(ok).items():
        ds_rows = [r for r in ok if r["dataset"]["kind"] == kind and r["dataset"]["root"] == root]
        block = DatasetBlock(
            kind, root, name, DATASET_NAMES.get(kind, kind) + ("" if name == kind else f" ({name})"), ds_rows
        )
        block.configs = group_configs([r for r in ds_rows if _is_main(r)])
        block.all_configs = group_configs(ds_rows)
        block.metrics = _metrics_present(block.configs or block.all_configs)
        blocks.append(block)
    return ReportContext(
        run_dir,
        rows,
        ok,
        load_study_file(run_dir),
        _run_invocations(run_dir),
        any(r.get("random_weights") for r in ok),
        blocks,
    )


def _value_cell(c: Config, ds: DatasetBlock, metric: str, category: str, st: Stat) -> Cell:
    attrs = {"data-config": c.key, "data-dataset": ds.name, "data-metric": metric, "data-category": category}
    if st.mean is not None:
        attrs["data-mean"] = repr(st.mean)
    if st.std is not None:
        attrs["data-std"] = repr(st.std)
    return Cell(fmt(st), attrs, num=True)


# ---------------------------------------------------------------------------------------------------------------
# sections


def _section_overview(doc: Doc, ctx: ReportContext) -> None:
    sec = doc.section("overview", "Overview")
    study = ctx.study or {}
    spec = study.get("spec") or {}
    if spec.get("description"):
        sec.para(spec["description"])
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
    methods = study.get("methods") or []
    if methods:

        def options(m: Mapping[str, Any]) -> str:
            kw = m.get("kwargs") or {}
            return f" ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()))})" if kw else ""

        items.append("Methods: " + "; ".join(f"**{m['label']}** = `{m['method']}`{options(m)}" for m in methods) + ".")
    if spec:
        items.append(
            f"Grid: shots {spec.get('shots')}, seeds {spec.get('seeds')}, --limit {spec.get('limit')}, "
            f"evaluation at {spec.get('eval_resolution')} resolution, AUPRO {spec.get('aupro')}; ablations: "
            + (", ".join(a["axis"] for a in spec.get("ablations") or []) or "none")
            + "."
        )
    invocations = study.get("invocations") or []
    for inv in invocations[-3:]:
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
    sec.bullets(items)
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


def _entries(ctx: ReportContext) -> list[Entry]:
    out: list[Entry] = []
    for ds in ctx.datasets:
        for c in ds.configs:
            metrics = {m: (_pct(macro_stat(c, m).mean), _pct(macro_stat(c, m).std)) for m in ds.metrics}
            hw = _mode([hardware_label(r, ctx.invocations) for r in c.rows])
            out.append(Entry(ds.title, c.label, c.first["method_label"], c.shots, metrics, _config_ms(c), hw, c.random))
    return out


def _section_recommend(doc: Doc, ctx: ReportContext) -> None:
    sec = doc.section("recommend", "Which method for me?")
    recs = recommend(_entries(ctx))
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


def _section_results(doc: Doc, ctx: ReportContext) -> None:
    sec = doc.section("results", "Results per dataset")
    configs_data = ctx.data.setdefault("configs", [])
    if not ctx.datasets:
        sec.note("No successful result row in this run.", "empty")
        return
    for ds in ctx.datasets:
        sec.heading(ds.title, 3, ident=f"results-{ds.name}")
        if not ds.configs:
            sec.note("Only ablation rows for this dataset (no main-grid configuration).", "empty")
            continue
        header = ["configuration", "seeds", "classes"] + [METRIC_NAMES[m] for m in ds.metrics]
        body = []
        for c in ds.configs:
            line = [
                Cell(c.label),
                Cell("—" if c.seeds == [None] else str(len(c.seeds)), num=True),
                Cell(str(len(c.categories)), num=True),
            ]
            line += [_value_cell(c, ds, m, "macro", macro_stat(c, m)) for m in ds.metrics]
            body.append(line)
            configs_data.append(
                {
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
            )
        sec.table(header, body, ident=f"macro-{ds.name}")
        sec.para(
            "Percent; macro mean over classes per seed, then mean ± sample std over reference seeds (zero-shot "
            "runs once: no ±). The same numbers as `tables/" + ds.name + "_{image,pixel}.md`."
        )
        categories = sorted({cat for c in ds.configs for cat in c.categories})
        for group, group_metrics in (("image", IMAGE_METRICS), ("pixel", PIXEL_METRICS)):
            panels = []
            for m in [x for x in group_metrics if x in ds.metrics]:
                series = []
                for c in ds.configs:
                    stats = [class_stat(c, cat, m) for cat in categories] + [macro_stat(c, m)]
                    series.append(F.Series(c.label, [_pct(s.mean) for s in stats], [_pct(s.std) for s in stats]))
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
        det = sec.details(f"Per-class tables ({ds.title})")
        for m in ds.metrics:
            det.heading(METRIC_NAMES[m], 4)
            body = []
            for cat in categories:
                body.append([Cell(cat)] + [_value_cell(c, ds, m, cat, class_stat(c, cat, m)) for c in ds.configs])
            body.append(
                [Cell("**macro mean**")] + [_value_cell(c, ds, m, "macro", macro_stat(c, m)) for c in ds.configs]
            )
            det.table(["class"] + [c.label for c in ds.configs], body)


def _section_curves(doc: Doc, ctx: ReportContext) -> None:
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
                        [_pct(s.mean) for s in stats],
                        [_pct(s.std) for s in stats],
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


def _section_efficiency(doc: Doc, ctx: ReportContext) -> None:
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
            ms = _config_ms(c)
            st = macro_stat(c, metric)
            if ms is None or st.mean is None:
                continue
            hw = _mode([hardware_label(r, ctx.invocations) for r in c.rows]) or "unknown"
            points.setdefault(hw, {}).setdefault(ds.title, []).append(
                F.ParetoPoint(c.label, ms, 100 * st.mean, main=_is_main(c.first))
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


def _heads_origin(row: Mapping[str, Any]) -> str | None:
    return training_origin(row)  # heads, learned prompts, ... (vlmad.report.zero_shot)


def _cross_domain_cells(ctx: ReportContext) -> dict[tuple[str, str], dict[str, Any]]:
    """Zero-shot main-grid rows of configurations whose artefact was trained on a dataset, by (trained on,
    evaluated on): their ok rows, refused rows and whether any was forced."""
    origin_by_label: dict[str, str] = {}
    for r in ctx.ok:
        o = _heads_origin(r)
        if o:
            origin_by_label[r["method_label"]] = o
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    kinds = {(ds.kind, ds.root): ds.title for ds in ctx.datasets}
    for r in ctx.rows:
        if r.get("shots") != 0 or not _is_main(r) or r["method_label"] not in origin_by_label:
            continue
        evald = kinds.get((r["dataset"]["kind"], r["dataset"]["root"]), r["dataset"]["kind"])
        key = (f"{r['method_label']}: {origin_by_label[r['method_label']]}", evald)  # one matrix row per method
        cells.setdefault(key, {"rows": [], "refused": [], "forced": False})
        if r.get("status") == "ok":
            cells[key]["rows"].append(r)
            cells[key]["forced"] |= bool((r.get("protocol") or {}).get("protocol_forced"))
        elif r.get("status") == "refused":
            cells[key]["refused"].append(r)
    return cells


def _section_cross_domain(doc: Doc, ctx: ReportContext) -> None:
    sec = doc.section("cross-domain", "Cross-domain matrix (trained on x evaluated on)")
    sec.para(
        "Trained artefacts (APRIL-GAN's projection heads, AnomalyCLIP's learned prompts) are trained on one "
        "dataset and evaluated on another (the papers' zero-shot protocol); one row per configuration and "
        "training dataset. Cells: zero-shot macro pixel AUROC / image AUROC; a diagonal cell is refused by "
        "the leakage guard unless forced (then labelled not zero-shot)."
    )
    cells = _cross_domain_cells(ctx)
    if not cells:
        sec.note(
            "No cross-domain runs in this study: no APRIL-GAN configuration with heads trained on a dataset "
            "(train them with `vlmad train aprilgan --dataset visa ...` and pass `--artefact FILE` to "
            "`vlmad study`).",
            "empty",
        )
        ctx.data["cross_domain"] = []
        return
    trained = sorted({k[0] for k in cells})
    evaluated = [ds.title for ds in ctx.datasets]
    values = {m: np.full((len(trained), len(evaluated)), np.nan) for m in ("pixel_auroc", "image_auroc")}
    notes = [["" for _ in evaluated] for _ in trained]
    body = []
    data = []
    for i, t in enumerate(trained):
        label, origin = t.rsplit(": ", 1)
        line = [Cell(f"{label}, trained on {origin}")]
        for j, e in enumerate(evaluated):
            cell = cells.get((t, e))
            if cell is None:
                line.append(Cell("not run"))
                notes[i][j] = "not run"
                continue
            if cell["rows"]:
                cfgs = group_configs(cell["rows"])
                c = cfgs[0]
                p, im = macro_stat(c, "pixel_auroc"), macro_stat(c, "image_auroc")
                values["pixel_auroc"][i, j] = _pct(p.mean) if p.mean is not None else np.nan
                values["image_auroc"][i, j] = _pct(im.mean) if im.mean is not None else np.nan
                text = f"{fmt(p)} / {fmt(im)}" + (" (forced: not zero-shot)" if cell["forced"] else "")
                line.append(
                    Cell(
                        text,
                        {
                            "data-trained": origin,
                            "data-evaluated": e,
                            "data-trained-config": label,
                            "data-pixel-auroc": repr(p.mean),
                            "data-image-auroc": repr(im.mean),
                        },
                        num=True,
                    )
                )
                data.append(
                    {
                        "trained_on": origin,
                        "method_label": label,
                        "evaluated_on": e,
                        "pixel_auroc": p.mean,
                        "image_auroc": im.mean,
                        "forced": cell["forced"],
                    }
                )
            else:
                line.append(Cell("refused: leakage (same dataset)"))
                notes[i][j] = "refused\n(leakage)"
        body.append(line)
    sec.table(["trained configuration"] + [f"evaluated on {e}" for e in evaluated], body)
    png = F.matrix_plot(
        ["{1}\n({0})".format(*t.rsplit(": ", 1)) for t in trained],  # "trained on visa" over "(its configuration)"
        evaluated,
        values["pixel_auroc"],
        notes,
        "pixel AUROC",
        "Zero-shot pixel AUROC: trained on x evaluated on",
        ctx.random,
    )
    sec.figure("cross-domain", png, "Cross-domain matrix (zero-shot macro pixel AUROC).")
    ctx.data["cross_domain"] = data


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


def _ablation_table(sec: Doc, ctx: ReportContext, axis: str, title: str) -> bool:
    from vlmad.study.axes import AXES

    groups = _ablation_groups(ctx, axis)
    if not groups:
        return False
    metrics = [m for m in ABLATION_METRICS if any(m in g["dataset"].metrics for g in groups)]
    header = ["dataset", "method", "K", "variant", "what", "seeds"]
    for m in metrics:
        header += [METRIC_NAMES[m], f"Δ {METRIC_NAMES[m]}"]
    body = []
    labels, panels_d = [], {m: ([], []) for m in metrics}
    data = ctx.data.setdefault("ablations", [])
    for g in groups:
        ds, default = g["dataset"], g["default"]
        if default is not None:
            line = [
                Cell(ds.title),
                Cell(g["base"]),
                Cell(str(g["shots"]), num=True),
                Cell("**default**"),
                Cell(_default_detail(axis, default), wrap=True),
                Cell("—" if default.seeds == [None] else str(len(default.seeds)), num=True),
            ]
            for m in metrics:
                line += [_value_cell(default, ds, m, "macro", macro_stat(default, m)), Cell("—", num=True)]
            body.append(line)
        for variant, detail, c in g["variants"]:
            line = [
                Cell(ds.title),
                Cell(g["base"]),
                Cell(str(g["shots"]), num=True),
                Cell(variant),
                Cell(detail, wrap=True),
                Cell("—" if c.seeds == [None] else str(len(c.seeds)), num=True),
            ]
            record = {
                "axis": axis,
                "dataset": ds.name,
                "method": g["base"],
                "shots": g["shots"],
                "variant": variant,
                "config": c.key,
                "default_config": None if default is None else default.key,
            }
            labels.append(f"{ds.name} · {g['base']} · K={g['shots']} · {variant}")
            for m in metrics:
                st = macro_stat(c, m)
                d = delta_stat(c, default, m) if default is not None else Stat(None)
                line += [
                    _value_cell(c, ds, m, "macro", st),
                    Cell(
                        fmt(d, signed=True),
                        {"data-delta": repr(d.mean), "data-metric": m, "data-config": c.key},
                        num=True,
                    ),
                ]
                record[m] = st.mean
                record[f"delta_{m}"] = d.mean
                record[f"delta_{m}_std"] = d.std
                panels_d[m][0].append(_pct(d.mean))
                panels_d[m][1].append(_pct(d.std))
            data.append(record)
            body.append(line)
    sec.table(header, body, ident=f"ablation-table-{axis}")
    sec.para(
        "Δ = variant − default in percentage points, paired by reference seed (zero-shot: one deterministic "
        "run, no spread); ± is the sample std of the per-seed deltas. Varied: "
        + AXES[axis].description
        + "."
        + (f" Note: {AXES[axis].note}." if AXES[axis].note else "")
    )
    if labels and metrics:
        png = F.delta_bars(
            labels,
            [(METRIC_NAMES[m], panels_d[m][0], panels_d[m][1]) for m in metrics],
            f"{title}: change vs the default",
            ctx.random,
        )
        sec.figure(f"ablation-{axis}", png, f"{title}: Δ vs the default configuration (error bars: std over seeds).")
    if any(g["default"] is None for g in groups):
        sec.note("Some variants have no default configuration in this run (the baseline rows are missing).", "warn")
    return True


def _default_detail(axis: str, c: Config) -> str:
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


def _section_ablations(doc: Doc, ctx: ReportContext) -> None:
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


def _section_published(doc: Doc, ctx: ReportContext) -> None:
    from vlmad.bench.published import find_entry

    sec = doc.section("published", "Published vs measured")
    sec.para(
        "Cells: measured / published (Δ = measured − published, in points). The paper's number is always "
        "shown for reference; Δ only when the protocol matches (weights, input size, default settings, all "
        "official classes, every image, no --limit, same AUPRO variant), otherwise the reason is given."
    )
    data = ctx.data.setdefault("published", [])
    any_table = False
    for ds in ctx.datasets:
        lines = []
        metrics_used: list[str] = []
        per_cfg = []
        for c in ds.configs:
            entry = find_entry(c.first["method"], ds.kind, c.shots)
            if entry is None:
                continue
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
                attrs = {
                    "data-config": c.key,
                    "data-metric": m,
                    "data-category": "macro",
                    "data-published": repr(published),
                }
                if st.mean is not None:
                    attrs["data-mean"] = repr(st.mean)
                cells[m] = Cell(text, attrs, num=True)
                if pub.reason and pub.reason not in reasons:
                    reasons.append(pub.reason)
                if m not in metrics_used:
                    metrics_used.append(m)
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
            if cells:
                per_cfg.append((c, entry, cells, reasons))
        if not per_cfg:
            continue
        metrics_used = [m for m in ALL_METRICS if m in metrics_used]
        for c, entry, cells, reasons in per_cfg:
            lines.append(
                [Cell(c.label), Cell(entry["label"])]
                + [cells.get(m, Cell("—", num=True)) for m in metrics_used]
                + [Cell("; ".join(reasons) or "comparable", wrap=True)]
            )
        sec.heading(ds.title, 3)
        sec.table(
            ["configuration", "published as"] + [METRIC_NAMES[m] for m in metrics_used] + ["why not comparable"], lines
        )
        any_table = True
    if not any_table:
        sec.note("No published number exists for these methods, datasets and shot counts.", "empty")


def _load_deploys(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted((run_dir / "deploy").glob("**/*.json")):
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _section_calibration(doc: Doc, ctx: ReportContext) -> None:
    sec = doc.section("calibration", "Deployment thresholds")
    deploys = _load_deploys(ctx.run_dir)
    ctx.data["deploy"] = []
    if not deploys:
        sec.note("No deploy.json in this run (calibration mode `none`, or no held-out normal images).", "empty")
        return
    modes = sorted(
        {
            d["calibration"].get("mode")
            + (f" (quantile {d['calibration']['quantile']})" if d["calibration"].get("quantile") else "")
            for _, d in deploys
        }
    )
    sec.para(
        "One `deploy.json` per (configuration, category): the threshold (decision: score >= threshold -> "
        "anomalous) and its expected false-alarm rate on new normal images. Use it with `vlmad detect "
        "--deploy FILE` (same method, weights and — for few-shot — the references listed in the file). "
        f"Calibration: {', '.join(modes)}. The test-split columns check the threshold on the evaluation images, "
        "which calibration never saw (normal-quantile mode)."
    )
    groups: dict[tuple, list[dict[str, Any]]] = {}
    titles = {ds.kind: ds.title for ds in ctx.datasets}
    body = []
    for path, d in deploys:
        cal = d["calibration"]
        groups.setdefault((cal.get("dataset"), cal.get("method_label"), cal.get("shots")), []).append(d)
        rel = path.relative_to(ctx.run_dir).as_posix()
        body.append(
            [
                Cell(titles.get(cal.get("dataset"), str(cal.get("dataset")))),
                Cell(d["class_name"]),
                Cell(str(cal.get("method_label"))),
                Cell(str(cal.get("shots")), num=True),
                Cell(f"{d['threshold']:.4g}", {"data-threshold": repr(d["threshold"])}, num=True),
                Cell(_rate(d.get("expected_false_alarm_rate")), num=True),
                Cell(str(cal.get("n_images")), num=True),
                Cell(_rate(cal.get("test_false_alarm_rate")), num=True),
                Cell(_rate(cal.get("test_recall")), num=True),
                Cell(cal.get("note", ""), wrap=True),
                Cell(f"`{rel}`"),
            ]
        )
        ctx.data["deploy"].append(
            {
                "file": rel,
                "threshold": d["threshold"],
                "expected_false_alarm_rate": d.get("expected_false_alarm_rate"),
                "test_false_alarm_rate": cal.get("test_false_alarm_rate"),
                "test_recall": cal.get("test_recall"),
            }
        )
    summary = []
    for (ds, label, shots), ds_list in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):

        def mean(key: str, where: str = "cal", items: list[dict[str, Any]] = ds_list) -> float | None:
            vals = [(d["calibration"] if where == "cal" else d).get(key) for d in items]
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else None

        summary.append(
            [
                Cell(titles.get(ds, str(ds))),
                Cell(str(label)),
                Cell(str(shots), num=True),
                Cell(str(len(ds_list)), num=True),
                Cell(_rate(mean("expected_false_alarm_rate", "top")), num=True),
                Cell(_rate(mean("test_false_alarm_rate")), num=True),
                Cell(_rate(mean("test_recall")), num=True),
            ]
        )
    sec.table(
        [
            "dataset",
            "configuration",
            "K",
            "categories",
            "expected false alarms (mean)",
            "test false alarms (mean)",
            "test recall (mean)",
        ],
        summary,
    )
    notes = sorted({d["calibration"].get("note") for _, d in deploys if d["calibration"].get("note")})
    for n in notes[:3]:
        sec.note(n, "warn")
    det = sec.details(f"All {len(deploys)} deploy files")
    det.table(
        [
            "dataset",
            "class",
            "configuration",
            "K",
            "threshold",
            "expected false alarms",
            "normals used",
            "test false alarms",
            "test recall",
            "note",
            "file",
        ],
        body,
    )


# ---------------------------------------------------------------------------------------------------------------
# gallery


def _method_specs(ctx: ReportContext) -> dict[str, dict[str, Any]]:
    """Original method specs (real paths) by label, from study.json and run.json."""
    specs: dict[str, dict[str, Any]] = {}
    for inv in ctx.invocations:
        for m in (inv.get("config") or {}).get("methods") or []:
            if isinstance(m, Mapping) and m.get("label"):
                specs[m["label"]] = dict(m)
    for phase in (ctx.study or {}).get("phases") or []:
        for m in phase.get("methods") or []:
            specs[m["label"]] = dict(m)
    return specs


def _threshold_for(
    ctx: ReportContext, row: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> tuple[float, str]:
    for _, d in _load_deploys(ctx.run_dir):
        if d["calibration"].get("row_key") == row["row_key"]:
            return float(d["threshold"]), "calibrated deploy threshold"
    from vlmad.study.calibration import f1_optimal_threshold

    scored = [r for r in records if r["score"] is not None]
    try:
        cal = f1_optimal_threshold([r["score"] for r in scored], [r["label"] == "anomalous" for r in scored])
        return cal.threshold, "F1-optimal threshold on the test scores"
    except Exception:
        return float(np.median([r["score"] for r in scored])) if scored else 0.5, "median test score"


def _gallery_rows(ctx: ReportContext) -> list[tuple[DatasetBlock, Config, dict[str, Any]]]:
    spec = (ctx.study or {}).get("spec") or {}
    rep = spec.get("report") or {}
    out = []
    for ds in ctx.datasets:
        if not ds.configs:
            continue
        shots_avail = sorted({c.shots for c in ds.configs})
        want = rep.get("gallery_shots")
        shots = want if want in shots_avail else shots_avail[0]
        for c in ds.configs:
            if c.shots != shots:
                continue
            seed = rep.get("gallery_seed")
            seeds = c.seeds
            chosen_seed = seed if seed in seeds else seeds[0]
            for r in sorted(c.rows, key=lambda r: r["dataset"]["category"]):
                if r["seed"] == chosen_seed:
                    out.append((ds, c, r))
    return out


@dataclass
class _GalleryItem:
    """One (dataset, configuration, row) of the gallery with its picked images and operating threshold."""

    ds: DatasetBlock
    config: Config
    row: dict[str, Any]
    picks: list[Any]
    threshold: float
    how: str
    cache_path: Path


def _gallery_items(ctx: ReportContext) -> list[_GalleryItem]:
    from vlmad.report import gallery as G

    spec = (ctx.study or {}).get("spec") or {}
    per_kind = int((spec.get("report") or {}).get("gallery_per_kind", 1) or 1)
    out = []
    for ds, c, row in _gallery_rows(ctx):
        records = read_scores(ctx.run_dir / row["scores_file"])
        threshold, how = _threshold_for(ctx, row, records)
        picks = G.select_images(records, threshold, per_kind)
        if picks:
            out.append(
                _GalleryItem(
                    ds,
                    c,
                    row,
                    picks,
                    threshold,
                    how,
                    ctx.run_dir / ASSETS_DIR / "gallery_cache" / f"{row['row_key']}.npz",
                )
            )
    return out


def compute_gallery_maps(
    run_dir: str | Path, factory: Any = None, device: str | None = None, log: Log | None = None
) -> dict[str, str]:
    """The run's step that stores the anomaly maps of the few gallery images (``report_files/gallery_cache``):
    the harness keeps scores, not maps, so the row's detector is rebuilt from its recorded method spec. The report
    itself then only reads the folder. Returns {configuration label: reason} for the ones that failed."""
    from vlmad.report import gallery as G

    say = log or (lambda _m: None)
    ctx = _collect(Path(run_dir).expanduser())
    if not ((((ctx.study or {}).get("spec") or {}).get("report") or {}).get("gallery", True)):
        return {}
    if factory is None:
        from vlmad.bench.runner import build_detector_from_spec

        factory = build_detector_from_spec
    device = device or ((ctx.study or {}).get("options") or {}).get("device") or "cpu"
    specs = _method_specs(ctx)
    detectors: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for item in _gallery_items(ctx):
        label = item.row["method_label"]
        if label in failed or not G.needs_recompute(item.row, item.picks, item.cache_path):
            continue
        try:
            if label not in detectors:
                spec_m = specs.get(label)
                if spec_m is None or keyed_kwargs(spec_m.get("kwargs") or {}) != (
                    item.row.get("method_spec") or {}
                ).get("kwargs"):
                    raise RuntimeError(
                        "the method spec of this row is not recorded in study.json/run.json (or a "
                        "file it names has changed)"
                    )
                say(f"gallery: building {label} to compute maps")
                detectors[label] = factory({**spec_m, "kwargs": {**spec_m["kwargs"], "device": device}})
            G.recompute_maps(detectors[label], item.row, item.picks, item.cache_path)
        except Exception as err:  # a gallery must not stop the run
            failed[label] = f"{type(err).__name__}: {err}"
            say(f"gallery: maps of {label} not computed ({failed[label]})")
    if failed:
        atomic_write_text(ctx.run_dir / ASSETS_DIR / "gallery_cache" / "failed.json", json.dumps(failed, indent=1))
    return failed


def _gallery_failures(run_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads((run_dir / ASSETS_DIR / "gallery_cache" / "failed.json").read_text()))
    except (OSError, ValueError):
        return {}


def _section_gallery(doc: Doc, ctx: ReportContext, enabled: bool) -> None:
    from vlmad.data import load_dataset
    from vlmad.report import gallery as G

    sec = doc.section("gallery", "Heatmap gallery")
    sec.para(
        "Per category and method: the clearest detection (highest-scored anomaly), the highest-scored normal "
        "image (the worst false alarm if any), the lowest-scored anomaly (the worst miss if any) and the image "
        "closest to the operating threshold — image | ground-truth mask (white = defect) | anomaly-map overlay "
        "(colour scale shared within a category). The harness stores scores, not maps: the run computed the "
        f"maps of these few images with the row's detector and references (`{ASSETS_DIR}/gallery_cache/`)."
    )
    if not enabled:
        sec.note("Gallery disabled for this report.", "empty")
        return
    items = _gallery_items(ctx)
    if not items:
        sec.note("No main-grid row to show.", "empty")
        return
    failed = _gallery_failures(ctx.run_dir)
    readers: dict[tuple[str, str], Any] = {}
    ctx.data["gallery"] = []
    current_ds = None
    for item in items:
        if current_ds != item.ds.name:
            sec.heading(f"{item.ds.title}", 3, ident=f"gallery-{item.ds.name}")
            current_ds = item.ds.name
        title = f"{item.row['dataset']['category']} — {item.config.label}"
        if G.needs_recompute(item.row, item.picks, item.cache_path):
            why = (
                failed.get(item.row["method_label"])
                or "not stored in this run folder; `vlmad report RUN` computes them"
            )
            sec.note(f"{title}: no maps ({why}).", "warn")
            continue
        ident = (item.row["dataset"]["kind"], item.row["dataset"]["root"])
        if ident not in readers:
            readers[ident] = load_dataset(*ident)
        _gallery_entry(sec, ctx, item, readers[ident], title)


def _gallery_entry(sec: Any, ctx: ReportContext, item: _GalleryItem, reader: Any, title: str) -> None:
    """One category's triptychs (image | mask | overlay) with captions, from the stored maps."""
    from vlmad.report import gallery as G

    row, c, ds, threshold = item.row, item.config, item.ds, item.threshold
    cat, label = row["dataset"]["category"], row["method_label"]
    maps = G.recompute_maps(None, row, item.picks, item.cache_path)  # every map is stored: nothing is computed
    root = Path(row["dataset"]["root"])
    samples = {relpath(s.image_path, root): s for s in reader.samples(cat, "test")}
    all_maps = [maps[p.path][1] for p in item.picks]
    vmin = float(min(np.min(m) for m in all_maps))
    vmax = float(max(np.max(m) for m in all_maps))
    stamp = RANDOM_WEIGHTS_STAMP if ctx.random else None
    items = []
    for p in item.picks:
        score, amap = maps[p.path]
        sample = samples.get(p.path)
        img = G.triptych(root / p.path, sample.mask_path if sample is not None else None, amap, vmin, vmax, stamp=stamp)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        decision = "anomalous" if p.score >= threshold else "normal"
        verdict = (
            "correct"
            if (decision == "anomalous") == p.is_anomalous
            else "false alarm"
            if decision == "anomalous"
            else "missed"
        )
        drift = (
            ""
            if abs(score - p.score) <= 1e-4 * max(1.0, abs(p.score))
            else f" (recomputed score {score:.4g} differs from the stored one)"
        )
        caption = (
            f"**{p.kind}** · `{p.path}` · {p.label}"
            + (f" ({p.defect_type})" if p.is_anomalous else "")
            + f" · score {p.score:.4g} vs threshold {threshold:.4g} ({item.how}) → {decision} ({verdict})"
            + drift
        )
        name = f"{ds.name}-{cat}-{label}-{c.shots}shot-{p.kind.replace(' ', '-')}"
        items.append({"name": name.replace("/", "_").replace(" ", "_"), "data": buf.getvalue(), "caption": caption})
        ctx.data["gallery"].append(
            {
                "dataset": ds.name,
                "category": cat,
                "config": c.key,
                "kind": p.kind,
                "path": p.path,
                "score": p.score,
                "recomputed_score": score,
            }
        )
    sec.heading(title, 4)
    sec.para(
        f"image | ground truth | anomaly map over the image; colour scale {vmin:.3g} (blue) to {vmax:.3g} "
        "(red), shared by the images of this category."
    )
    sec.gallery(f"{ds.name}-{cat}-{label}", items)


# ---------------------------------------------------------------------------------------------------------------
# appendix


def _section_configs(doc: Doc, ctx: ReportContext) -> None:
    from vlmad.bench.tables import _describe

    sec = doc.section("configurations", "Configurations and rows not computed")
    sec.para(
        "Every configuration of the tables with its full protocol (method, weights, input size, prompts, "
        "settings, evaluation options, seeds, tags)."
    )
    for ds in ctx.datasets:
        if ds.all_configs:
            det = sec.details(f"{ds.title}: {len(ds.all_configs)} configuration(s)")
            det.bullets([f"**{c.label}**: {_describe(c)}" for c in ds.all_configs])
    failed = [r for r in ctx.rows if r.get("status") != "ok"]
    if failed:
        det = sec.details(f"Rows not computed ({len(failed)})")
        det.table(
            ["status", "configuration", "K", "seed", "dataset/class", "reason"],
            [
                [
                    r.get("status", ""),
                    r["method_label"],
                    str(r.get("shots")),
                    str(r.get("seed")),
                    f"{r['dataset']['kind']}/{r['dataset']['category']}",
                    r.get("reason") or "",
                ]
                for r in failed
            ],
        )
    else:
        sec.para("Every planned row was computed.")


# ---------------------------------------------------------------------------------------------------------------
# entry point


def build_report(run_dir: str | Path, gallery: bool = True, log: Log | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` (+ ``report_files/``) into ``run_dir``; returns their paths.

    Reads the run folder only (results, scores, study.json, deploy files, the gallery maps stored by
    :func:`compute_gallery_maps`); it never builds a model."""
    say = log or (lambda _m: None)
    run = Path(run_dir).expanduser()
    ctx = _collect(run)
    spec = (ctx.study or {}).get("spec") or {}
    title = f"vlmad study report: {spec['name']}" if spec.get("name") else "vlmad benchmark report"
    subtitle = (
        f"{len(ctx.ok)} result rows · {', '.join(ds.title for ds in ctx.datasets) or 'no dataset'} · "
        f"generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} · vlmad " + __version__
    )
    doc = Doc()
    _section_overview(doc, ctx)
    _section_recommend(doc, ctx)
    _section_results(doc, ctx)
    _section_curves(doc, ctx)
    _section_efficiency(doc, ctx)
    _section_cross_domain(doc, ctx)
    _section_ablations(doc, ctx)
    _section_published(doc, ctx)
    _section_calibration(doc, ctx)
    _section_gallery(doc, ctx, gallery and (spec.get("report") or {}).get("gallery", True))
    _section_configs(doc, ctx)
    toc = [(b.ident, b.text) for b in doc.blocks if b.kind == "section"]
    ctx.data["random_weights"] = ctx.random
    ctx.data["sections"] = [i for i, _ in toc]
    data_json = json.dumps(ctx.data, sort_keys=True, default=str)
    html_text = render_html(doc, title, subtitle, ctx.random, data_json, toc)
    md_text = render_markdown(doc, title, subtitle, ctx.random, run / ASSETS_DIR, ASSETS_DIR)
    atomic_write_text(run / HTML_FILE, html_text)
    atomic_write_text(run / MD_FILE, md_text)
    say(f"report: {run / HTML_FILE} (+ {run / MD_FILE})")
    return {"html": run / HTML_FILE, "markdown": run / MD_FILE}
