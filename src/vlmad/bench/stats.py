"""Aggregation and number formatting shared by the benchmark tables and the study report (one copy of each)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

MISSING = "—"


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are present; None when none is."""
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def maximum(values: Iterable[float | None]) -> float | None:
    """Largest of the values that are present; None when none is."""
    vals = [float(v) for v in values if v is not None]
    return max(vals) if vals else None


def num(v: Any, digits: int = 1, signed: bool = False) -> str:
    """A table cell: ``—`` for a missing or non-finite value, a number with ``digits`` decimals, text as is."""
    if v is None or v == "" or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return str(v)
