"""The appendix: every configuration with its full protocol, and the rows that were not computed."""

from __future__ import annotations

from vlmad.report.context import ReportContext
from vlmad.report.html import Doc


def section_configs(doc: Doc, ctx: ReportContext) -> None:
    """Every configuration's full protocol, and the rows that were refused or failed."""
    from vlmad.bench.tables import describe

    sec = doc.section("configurations", "Configurations and rows not computed")
    sec.para(
        "Every configuration of the tables with its full protocol (method, weights, input size, prompts, "
        "settings, evaluation options, seeds, tags)."
    )
    for ds in ctx.datasets:
        if ds.all_configs:
            det = sec.details(f"{ds.title}: {len(ds.all_configs)} configuration(s)")
            det.bullets([f"**{c.label}**: {describe(c)}" for c in ds.all_configs])
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
