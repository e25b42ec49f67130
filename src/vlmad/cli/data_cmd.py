"""`vlmad make-dataset`: write a small synthetic dataset in a benchmark layout.

Lets a user try every command (evaluate, bench, report) without downloading MVTec AD or VisA, and gives bug
reports a reproducible input: the same options always write the same files.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlmad.cli import app

# kept in step with vlmad.data.synthetic (checked by tests/cli/test_entry.py); not imported here so that
# `vlmad --help` does not load numpy and PIL
LAYOUTS = ("mvtec", "visa", "visa-converted", "folder")
DEFAULT_CATEGORIES = ("demo_texture", "demo_object")

#: which reader opens each synthetic layout
READER_FOR_LAYOUT = {"mvtec": "mvtec", "visa": "visa", "visa-converted": "visa", "folder": "folder"}


@app.command("make-dataset")
def make_dataset_cmd(
    out_arg: Path | None = typer.Argument(
        None, help="Folder to create (must be new or empty); or --out.", show_default=False
    ),
    out_opt: Path | None = typer.Option(None, "--out", "-o", help="Folder to create (must be new or empty)."),
    layout: str = typer.Option("mvtec", "--layout", help=f"One of: {', '.join(LAYOUTS)}."),
    categories: str = typer.Option(",".join(DEFAULT_CATEGORIES), "--categories", help="Comma-separated."),
    n_train: int = typer.Option(8, "--n-train", help="Normal reference images per category."),
    n_test_good: int = typer.Option(4, "--n-test-good", help="Normal test images per category."),
    n_test_bad: int = typer.Option(4, "--n-test-bad", help="Anomalous test images per category."),
    size: int = typer.Option(128, "--size", help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files."),
) -> None:
    """Write a synthetic anomaly-detection dataset (procedural images, pasted defects, exact masks)."""
    from vlmad.data import load_dataset
    from vlmad.data.synthetic import make_dataset
    from vlmad_runtime.errors import VlmadError

    if (out_arg is None) == (out_opt is None):
        raise VlmadError("give the folder to create once", "e.g. vlmad make-dataset data/ or --out data/")
    out = out_arg or out_opt
    root = make_dataset(
        out,
        layout=layout,  # type: ignore[arg-type]  # validated by make_dataset
        categories=categories,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_bad=n_test_bad,
        size=size,
        seed=seed,
    )
    # read it back with the matching reader: what is printed is what the harness will see
    kind = READER_FOR_LAYOUT[layout]
    dataset = load_dataset(kind, root)
    typer.echo(f"wrote {layout} dataset to {root} ({size}x{size} px, seed {seed}; dataset kind {kind!r})")
    for category in dataset.categories:
        test = dataset.samples(category, "test")
        n_bad = sum(s.is_anomalous for s in test)
        train = len(dataset.samples(category, "train")) if n_train else 0
        typer.echo(f"  {category}: {train} train, {len(test) - n_bad} test good, {n_bad} test anomalous")


@app.command("download")
def download_cmd(
    dataset: str = typer.Argument(..., help="mvtec (MVTec AD, 4.9 GB) or visa (VisA, 1.8 GB)."),
    root: Path = typer.Option(..., "--root", help="Dataset folder to create; pass the same --root to benchmark."),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the verified archive in ROOT/.download."),
    url: str | None = typer.Option(None, "--url", help="A mirror of the official archive.", hidden=True),
    sha256: str | None = typer.Option(None, "--sha256", help="Its SHA-256 (with --url).", hidden=True),
) -> None:
    """Download MVTec AD or VisA from the official location: SHA-256 verified, resumable, safely unpacked
    (VisA converted to the MVTec-like layout)."""
    from vlmad.cli import on_interrupt
    from vlmad.cli.common import console
    from vlmad.download import download_dataset

    if (url is None) != (sha256 is None):
        from vlmad_runtime.errors import VlmadError

        raise VlmadError("--url and --sha256 go together", "a mirror must be checked against its own checksum")
    on_interrupt(f"the partial download is kept in {root / '.download'}; rerun the same command to resume it")
    with _byte_progress(console) as progress:
        download_dataset(
            dataset.lower(),
            root,
            url=url,
            sha256=sha256,
            keep_archive=keep_archive,
            progress=progress,
            log=lambda m: console.print(m, highlight=False),
        )
    console.print(f"done: {root} (use --dataset {dataset.lower()} --root {root})", highlight=False)


def _byte_progress(console):
    """A download bar on a terminal, else a plain line every 10 s."""
    import time
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console) as p:
                task = p.add_task("download", total=None)
                yield lambda done, total: p.update(task, completed=done, total=total)
            return
        last = [0.0]

        def line(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= 10.0 or done == total:
                last[0] = now
                of = f" of {total / 1e6:.1f}" if total else ""
                console.print(f"download: {done / 1e6:.1f}{of} MB", highlight=False)

        yield line

    return bar()
