"""Deployment thresholds: the run's ``deploy.json`` files (one per configuration and category), their expected
false-alarm rate and how the threshold does on the test split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmad.report.context import ReportContext, load_deploys, rate
from vlmad.report.html import Cell, Doc

_SUMMARY_HEADER = [
    "dataset",
    "configuration",
    "K",
    "categories",
    "expected false alarms (mean)",
    "test false alarms (mean)",
    "test recall (mean)",
]
_FILES_HEADER = [
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
]


def _modes(deploys: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return sorted(
        {
            d["calibration"].get("mode")
            + (f" (quantile {d['calibration']['quantile']})" if d["calibration"].get("quantile") else "")
            for _, d in deploys
        }
    )


def _file_line(d: Mapping[str, Any], rel: str, titles: Mapping[str, str]) -> list[Cell]:
    """One deploy file's row of the details table."""
    cal = d["calibration"]
    return [
        Cell(titles.get(cal.get("dataset"), str(cal.get("dataset")))),
        Cell(d["class_name"]),
        Cell(str(cal.get("method_label"))),
        Cell(str(cal.get("shots")), num=True),
        Cell(f"{d['threshold']:.4g}", {"data-threshold": repr(d["threshold"])}, num=True),
        Cell(rate(d.get("expected_false_alarm_rate")), num=True),
        Cell(str(cal.get("n_images")), num=True),
        Cell(rate(cal.get("test_false_alarm_rate")), num=True),
        Cell(rate(cal.get("test_recall")), num=True),
        Cell(cal.get("note", ""), wrap=True),
        Cell(f"`{rel}`"),
    ]


def _summary(groups: dict[tuple, list[dict[str, Any]]], titles: Mapping[str, str]) -> list[list[Cell]]:
    """Per (dataset, configuration, K): the number of categories and the mean rates over them."""
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
                Cell(rate(mean("expected_false_alarm_rate", "top")), num=True),
                Cell(rate(mean("test_false_alarm_rate")), num=True),
                Cell(rate(mean("test_recall")), num=True),
            ]
        )
    return summary


def section_calibration(doc: Doc, ctx: ReportContext) -> None:
    """The deploy files of the run: summary per configuration, notes, and every file in a collapsible table."""
    sec = doc.section("calibration", "Deployment thresholds")
    deploys = load_deploys(ctx.run_dir)
    ctx.data["deploy"] = []
    if not deploys:
        sec.note("No deploy.json in this run (calibration mode `none`, or no held-out normal images).", "empty")
        return
    sec.para(
        "One `deploy.json` per (configuration, category): the threshold (decision: score >= threshold -> "
        "anomalous) and its expected false-alarm rate on new normal images. Use it with `vlmad detect "
        "--deploy FILE` (same method, weights and — for few-shot — the references listed in the file). "
        f"Calibration: {', '.join(_modes(deploys))}. The test-split columns check the threshold on the evaluation "
        "images, which calibration never saw (normal-quantile mode)."
    )
    groups: dict[tuple, list[dict[str, Any]]] = {}
    titles = {ds.kind: ds.title for ds in ctx.datasets}
    body = []
    for path, d in deploys:
        cal = d["calibration"]
        groups.setdefault((cal.get("dataset"), cal.get("method_label"), cal.get("shots")), []).append(d)
        rel = path.relative_to(ctx.run_dir).as_posix()
        body.append(_file_line(d, rel, titles))
        ctx.data["deploy"].append(
            {
                "file": rel,
                "threshold": d["threshold"],
                "expected_false_alarm_rate": d.get("expected_false_alarm_rate"),
                "test_false_alarm_rate": cal.get("test_false_alarm_rate"),
                "test_recall": cal.get("test_recall"),
            }
        )
    sec.table(_SUMMARY_HEADER, _summary(groups, titles))
    notes = sorted({d["calibration"].get("note") for _, d in deploys if d["calibration"].get("note")})
    for n in notes[:3]:
        sec.note(n, "warn")
    det = sec.details(f"All {len(deploys)} deploy files")
    det.table(_FILES_HEADER, body)
