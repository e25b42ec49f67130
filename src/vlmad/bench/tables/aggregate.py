"""Aggregation of a configuration's rows: per class over seeds, and the macro mean over classes per seed then
over seeds (mean ± sample std, ddof=1); :func:`fmt` writes a statistic in points."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from vlmad.bench.tables.configs import Config


@dataclass
class Stat:
    mean: float | None
    std: float | None = None
    n: int = 0
    note: str | None = None
    classes: int = 0
    values: list[float] = field(default_factory=list)


def _stat(values: Sequence[float]) -> Stat:
    if not values:
        return Stat(None)
    mean = math.fsum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean, std, len(values), values=list(values))


def class_stat(config: Config, category: str, metric: str) -> Stat:
    cells = config.cell_metrics()
    vals = [cells[(category, s)][metric] for s in config.seeds if metric in cells.get((category, s), {})]
    return _stat(vals)


def macro_stat(config: Config, metric: str) -> Stat:
    """Macro mean over the configuration's classes per seed, then mean ± std over seeds (complete seeds only)."""
    from vlmad.metrics import macro_mean

    cells = config.cell_metrics()
    cats = config.categories
    per_seed: list[float] = []
    incomplete = 0
    for s in config.seeds:
        have = {c: {metric: cells[(c, s)][metric]} for c in cats if metric in cells.get((c, s), {})}
        if not have:
            continue
        if len(have) < len(cats):
            incomplete += 1
            continue
        per_seed.append(macro_mean(have)[metric])
    st = _stat(per_seed)
    st.classes = len(cats)
    if incomplete:
        st.note = f"{incomplete} seed(s) left out: {metric} missing for some classes"
    return st


def fmt(st: Stat, signed: bool = False) -> str:
    """Mean ± std in points; ``signed`` for differences (always shows + or -)."""
    if st.mean is None:
        return "—"
    text = f"{100 * st.mean:+.1f}" if signed else f"{100 * st.mean:.1f}"
    if st.std is not None:
        text += f" ± {100 * st.std:.1f}"
    return text
