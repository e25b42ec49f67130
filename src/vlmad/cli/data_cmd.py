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
    out: Path = typer.Argument(..., help="Folder to create (must be new or empty)."),
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
