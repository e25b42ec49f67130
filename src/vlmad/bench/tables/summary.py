"""Writing a run folder's tables: ``tables/<dataset>_{image,pixel}.{md,csv}``, ``efficiency.{md,csv}`` and
``summary.md`` (everything on one page, with the rows not computed and a warning on mixed code versions)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmad.bench.results import load_results
from vlmad.bench.tables.configs import METRIC_GROUPS, RANDOM_MARK, dataset_names
from vlmad.bench.tables.efficiency import efficiency_markdown, efficiency_records
from vlmad.bench.tables.markdown import csv_text, demote
from vlmad.bench.tables.metric_tables import build_table
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.fileio import atomic_write_text


def write_reports(run_dir: str | Path) -> list[Path]:
    """(Re)write every table of a run folder from its results.jsonl; returns the files written."""
    out = Path(run_dir)
    rows = load_results(out)
    ok = [r for r in rows if r.get("status") == "ok"]
    written: list[Path] = []
    tables_dir = out / "tables"
    sections: list[str] = []
    for (kind, root), name in dataset_names(ok).items():
        ds_rows = [r for r in ok if r["dataset"]["kind"] == kind and r["dataset"]["root"] == root]
        for group in METRIC_GROUPS:
            built = build_table(ds_rows, kind, root, name, group)
            if built is None:
                continue
            text, records = built
            md, cs = tables_dir / f"{name}_{group}.md", tables_dir / f"{name}_{group}.csv"
            atomic_write_text(md, text)
            atomic_write_text(cs, csv_text(records))
            written += [md, cs]
            sections.append(text)
    eff = efficiency_records(ok)
    eff_md = efficiency_markdown(eff)
    if eff:
        atomic_write_text(out / "efficiency.md", eff_md)
        atomic_write_text(out / "efficiency.csv", csv_text(eff))
        written += [out / "efficiency.md", out / "efficiency.csv"]
    summary = out / "summary.md"
    atomic_write_text(summary, _summary(out, rows, ok, sections, eff_md if eff else ""))
    written.append(summary)
    return written


def _summary(
    out: Path, rows: Sequence[Mapping[str, Any]], ok: Sequence[Mapping[str, Any]], sections: list[str], eff_md: str
) -> str:
    lines = ["# vlmad benchmark summary", ""]
    if any(r.get("random_weights") for r in ok):
        lines += [f"> **WARNING: {RANDOM_WEIGHTS_STAMP}** for the rows marked {RANDOM_MARK}.", ""]
    lines += fingerprint_warning(ok)
    try:
        latest = json.loads((out / "run.json").read_text()).get("latest", {})
    except (OSError, ValueError):
        latest = {}
    env = latest.get("environment", {})
    failed = [r for r in rows if r.get("status") != "ok"]
    lines += [
        f"- results: `{out / 'results.jsonl'}` ({len(ok)} row(s) ok, {len(failed)} refused/failed)",
        f"- tables: `{out / 'tables'}`; efficiency: `{out / 'efficiency.md'}`",
    ]
    if env:
        lines.append(
            f"- environment: vlmad {env.get('vlmad')}, torch {env.get('torch')}, open_clip "
            f"{env.get('open_clip')}, device {env.get('device')}, {env.get('torch_threads')} torch threads"
        )
    if latest.get("argv"):
        lines.append(f"- last command: `{shlex.join(str(a) for a in latest['argv'])}`")
    lines.append("")
    if failed:
        lines += ["## Rows not computed", ""]
        for r in failed:
            seed = "" if r.get("seed") is None else f" seed {r['seed']}"
            lines.append(
                f"- **{r.get('status')}** {r['method_label']} {r['shots']}-shot{seed} · "
                f"{r['dataset']['kind']}/{r['dataset']['category']}: {r.get('reason')}"
                + (f" (hint: {r['hint']})" if r.get("hint") else "")
            )
        lines += [
            "",
            "Rerun with `--retry-failed` to try these rows again (`--force-protocol` to override a "
            "refused protocol check; forced rows are labelled).",
            "",
        ]
    for text in sections:
        lines += ["---", "", demote(text), ""]
    if eff_md:
        lines += ["---", "", demote(eff_md)]
    return "\n".join(lines).rstrip() + "\n"


def fingerprint_warning(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines warning that a run folder mixes rows computed by different code (resumed after a change)."""
    from vlmad.provenance import mixed_fingerprints

    seen = mixed_fingerprints(list(rows))
    if not seen:
        return []
    return [
        f"> **WARNING: rows from {len(seen)} code versions** ({', '.join(seen)}): this folder was resumed "
        "after a code change; numbers of different versions sit side by side (rerun into a new --out to "
        "recompute them all).",
        "",
    ]
