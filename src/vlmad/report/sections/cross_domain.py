"""Cross-domain matrix: trained artefacts (APRIL-GAN heads, AnomalyCLIP prompts: any ``*_training_data`` record)
trained on one dataset, evaluated zero-shot on another, one row per configuration and training dataset; diagonal
cells are refused by the leakage guard unless forced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlmad.bench.tables import fmt, group_configs, macro_stat
from vlmad.report import figures as F
from vlmad.report.context import ReportContext, is_main, pct
from vlmad.report.html import Cell, Doc
from vlmad.report.zero_shot import training_origin


def _heads_origin(row: Mapping[str, Any]) -> str | None:
    """The dataset a row's artefact was trained on (from the detector info), or None."""
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
        if r.get("shots") != 0 or not is_main(r) or r["method_label"] not in origin_by_label:
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


def _measured_cell(
    t: str, e: str, cell: Mapping[str, Any], values: dict[str, np.ndarray], ij: tuple[int, int]
) -> tuple[Cell, dict[str, Any]]:
    """The table cell and JSON record of one (trained on, evaluated on) pair with ok rows; fills ``values``."""
    label, t = t.rsplit(": ", 1)
    c = group_configs(cell["rows"])[0]
    p, im = macro_stat(c, "pixel_auroc"), macro_stat(c, "image_auroc")
    values["pixel_auroc"][ij] = pct(p.mean) if p.mean is not None else np.nan
    values["image_auroc"][ij] = pct(im.mean) if im.mean is not None else np.nan
    text = f"{fmt(p)} / {fmt(im)}" + (" (forced: not zero-shot)" if cell["forced"] else "")
    attrs = {
        "data-trained": t,
        "data-evaluated": e,
        "data-trained-config": label,
        "data-pixel-auroc": repr(p.mean),
        "data-image-auroc": repr(im.mean),
    }
    record = {
        "trained_on": t,
        "method_label": label,
        "evaluated_on": e,
        "pixel_auroc": p.mean,
        "image_auroc": im.mean,
        "forced": cell["forced"],
    }
    return Cell(text, attrs, num=True), record


def section_cross_domain(doc: Doc, ctx: ReportContext) -> None:
    """The trained-on x evaluated-on table and figure; an empty note when no artefact was trained on a dataset."""
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
        line = [Cell("{}, trained on {}".format(*t.rsplit(": ", 1)))]
        for j, e in enumerate(evaluated):
            cell = cells.get((t, e))
            if cell is None:
                line.append(Cell("not run"))
                notes[i][j] = "not run"
            elif cell["rows"]:
                shown, record = _measured_cell(t, e, cell, values, (i, j))
                line.append(shown)
                data.append(record)
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
