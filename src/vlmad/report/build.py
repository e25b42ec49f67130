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
heatmap gallery, configurations and rows not computed: one module each in :mod:`vlmad.report.sections`, over the
run folder read once (:mod:`vlmad.report.context`); the gallery maps are stored by the run's step
:func:`~vlmad.report.gallery_maps.compute_gallery_maps`. This module only assembles them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from vlmad.report.context import ASSETS_DIR, HTML_FILE, MD_FILE, Log, collect
from vlmad.report.gallery_maps import compute_gallery_maps
from vlmad.report.html import Doc, render_html, render_markdown
from vlmad.report.sections.ablation import section_ablations
from vlmad.report.sections.calibration import section_calibration
from vlmad.report.sections.configs import section_configs
from vlmad.report.sections.cross_domain import section_cross_domain
from vlmad.report.sections.efficiency import section_efficiency
from vlmad.report.sections.gallery import section_gallery
from vlmad.report.sections.overview import section_overview, section_recommend
from vlmad.report.sections.published import section_published
from vlmad.report.sections.results import section_curves, section_results
from vlmad_runtime.fileio import atomic_write_text
from vlmad_runtime.version import __version__

__all__ = ["ASSETS_DIR", "HTML_FILE", "MD_FILE", "build_report", "compute_gallery_maps"]


def build_report(run_dir: str | Path, gallery: bool = True, log: Log | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` (+ ``report_files/``) into ``run_dir``; returns their paths.

    Reads the run folder only (results, scores, study.json, deploy files, the gallery maps stored by
    :func:`compute_gallery_maps`); it never builds a model."""
    say = log or (lambda _m: None)
    run = Path(run_dir).expanduser()
    ctx = collect(run)
    spec = (ctx.study or {}).get("spec") or {}
    title = f"vlmad study report: {spec['name']}" if spec.get("name") else "vlmad benchmark report"
    subtitle = (
        f"{len(ctx.ok)} result rows · {', '.join(ds.title for ds in ctx.datasets) or 'no dataset'} · "
        f"generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} · vlmad " + __version__
    )
    doc = Doc()
    section_overview(doc, ctx)
    section_recommend(doc, ctx)
    section_results(doc, ctx)
    section_curves(doc, ctx)
    section_efficiency(doc, ctx)
    section_cross_domain(doc, ctx)
    section_ablations(doc, ctx)
    section_published(doc, ctx)
    section_calibration(doc, ctx)
    section_gallery(doc, ctx, gallery and (spec.get("report") or {}).get("gallery", True))
    section_configs(doc, ctx)
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
