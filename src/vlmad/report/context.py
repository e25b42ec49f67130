"""What every report section reads: the run folder collected once into a :class:`ReportContext` (rows, datasets
with their grouped configurations, study.json, run.json invocations) and the small value helpers the sections
share (percent, rates, seed-paired deltas, the hardware a row ran on, the cell of one value)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.bench.published import DATASET_NAMES
from vlmad.bench.results import load_results
from vlmad.bench.stats import median as _median
from vlmad.bench.tables import IMAGE_METRICS, PIXEL_METRICS, Config, Stat, dataset_names, fmt, group_configs
from vlmad.report.html import Cell

HTML_FILE = "report.html"
MD_FILE = "report.md"
ASSETS_DIR = "report_files"
ALL_METRICS = (*IMAGE_METRICS, *PIXEL_METRICS)
CURVE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")
ABLATION_METRICS = ("image_auroc", "pixel_auroc", "aupro")
Log = Callable[[str], None]


def pct(v: float | None) -> float | None:
    """A fraction in percent (None stays None)."""
    return None if v is None else 100.0 * v


def rate(v: float | None) -> str:
    """A rate as a percent cell (— when unknown)."""
    return "—" if v is None else f"{100 * v:.1f} %"


def is_main(row: Mapping[str, Any]) -> bool:
    """Main-grid rows carry no tags (ablation rows do)."""
    return not (row.get("tags") or {})


def _metrics_present(configs: Sequence[Config]) -> list[str]:
    return [m for m in ALL_METRICS if any(m in (r.get("metrics") or {}) for c in configs for r in c.rows)]


def config_ms(c: Config) -> float | None:
    """Median predict ms/image of a configuration's rows (warm batches when any)."""
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


def mode_of(values: Sequence[str]) -> str | None:
    """The most frequent value (None for none)."""
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


def collect(run_dir: Path) -> ReportContext:
    """Read the run folder once: every section works on this context (and adds its JSON data to it)."""
    from vlmad.study.files import load_study_file

    rows = load_results(run_dir)
    ok = [r for r in rows if r.get("status") == "ok"]
    blocks: list[DatasetBlock] = []
    for (kind, root), name in dataset_names(ok).items():
        ds_rows = [r for r in ok if r["dataset"]["kind"] == kind and r["dataset"]["root"] == root]
        block = DatasetBlock(
            kind, root, name, DATASET_NAMES.get(kind, kind) + ("" if name == kind else f" ({name})"), ds_rows
        )
        block.configs = group_configs([r for r in ds_rows if is_main(r)])
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


def value_cell(c: Config, ds: DatasetBlock, metric: str, category: str, st: Stat) -> Cell:
    """A table cell of one statistic, carrying its exact values as ``data-*`` attributes."""
    attrs = {"data-config": c.key, "data-dataset": ds.name, "data-metric": metric, "data-category": category}
    if st.mean is not None:
        attrs["data-mean"] = repr(st.mean)
    if st.std is not None:
        attrs["data-std"] = repr(st.std)
    return Cell(fmt(st), attrs, num=True)


def load_deploys(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The deploy files of the run (``deploy/**/*.json``) with their parsed content; unreadable ones skipped."""
    out = []
    for p in sorted((run_dir / "deploy").glob("**/*.json")):
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError):
            continue
    return out
