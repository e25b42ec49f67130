"""What a grid run prints: a rich progress display (all images with ETA + the current category) or silence, and
the one-line summary of a computed row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RunProgress:
    """rich progress (overall images with ETA + current category) or silence."""

    def __init__(self, enabled: bool, total_images: int) -> None:
        self.enabled = enabled
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.overall = self.bar.add_task("all rows", total=total_images)
        self.current = None

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def category(self, description: str, total: int) -> None:
        if self.bar is None:
            return
        if self.current is not None:
            self.bar.remove_task(self.current)
        self.current = self.bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self.bar is None:
            return
        self.bar.advance(self.overall, n)
        if self.current is not None:
            self.bar.advance(self.current, n)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)


def _fmt_metric(metrics: Mapping[str, float], key: str, name: str) -> str:
    return f"{name} {100 * metrics[key]:.1f}" if key in metrics else ""


def row_line(row: Mapping[str, Any]) -> str:
    """The console line of a computed row: its key metrics and predict time."""
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
