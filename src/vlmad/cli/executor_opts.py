"""Options choosing where `vlmad benchmark` / `vlmad study` rows run (see vlmad.bench.executors)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor", help="Where rows run: local (this process) or ray (a Ray cluster; pip install 'vlmad[ray]')."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --executor ray: 'auto' or host:port or ray://host:port joins a running cluster; "
        "left out, a local Ray instance is started for the run.",
    ),
]
CpusPerRowOpt = Annotated[float, typer.Option("--cpus-per-row", min=0, help="With --executor ray: CPUs per row.")]
GpusPerRowOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-row", min=0, help="With --executor ray: GPUs per row (e.g. 1, or 0.5 to pack two rows per GPU)."
    ),
]
RowRetriesOpt = Annotated[
    int,
    typer.Option(
        "--row-retries",
        min=0,
        help="With --executor ray: resubmissions of a row whose worker died, before it is recorded as failed.",
    ),
]


def executor_kwargs(
    executor: str, ray_address: str | None, cpus_per_row: float, gpus_per_row: float, row_retries: int
) -> dict[str, Any]:
    """The executor fields of BenchmarkConfig / StudyOptions, named as there."""
    return {
        "executor": executor,
        "ray_address": ray_address,
        "cpus_per_row": cpus_per_row,
        "gpus_per_row": gpus_per_row,
        "row_retries": row_retries,
    }
