"""How a grid row ends, shared by the runner and the executors (which run below it, so it cannot import them).

:class:`RowFailed` carries a refused or failed row's status, message and hint to the writer; :func:`row_line` is
the progress line of a finished row, printed the same way whichever executor computed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmad_runtime.errors import VlmadError


class RowFailed(Exception):
    """A row that ends as ``refused`` or ``error``: recorded with its reason instead of metrics."""

    def __init__(self, status: str, err: VlmadError | str) -> None:
        super().__init__(str(err))
        self.status = status
        self.message = err.message if isinstance(err, VlmadError) else str(err)
        self.hint = err.hint if isinstance(err, VlmadError) else None


def _fmt_metric(metrics: Mapping[str, float], key: str, name: str) -> str:
    return f"{name} {100 * metrics[key]:.1f}" if key in metrics else ""


def row_line(row: Mapping[str, Any]) -> str:
    """The progress line of a computed row (its metrics in percent and its prediction time)."""
    m = row.get("metrics") or {}
    parts = [
        _fmt_metric(m, "image_auroc", "i-AUROC"),
        _fmt_metric(m, "pixel_auroc", "p-AUROC"),
        _fmt_metric(m, "aupro", "AUPRO"),
    ]
    seed = "" if row["seed"] is None else f" s{row['seed']}"
    ds = row["dataset"]
    t = row.get("timing", {})
    return (
        f"[green]✓[/] {ds['kind']}/{ds['category']} {row['method_label']} {row['shots']}-shot{seed}: "
        f"{'  '.join(p for p in parts if p) or 'no metric'}  ({t.get('predict_s', 0):.1f} s)"
    )
