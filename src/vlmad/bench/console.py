"""What a grid run shows while it runs: a rich progress display (all images with ETA + the current category) or
silence. The one-line summary of a computed row is :func:`vlmad.bench.row_status.row_line`."""

from __future__ import annotations


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
