"""`vlmad benchmark`: run (or resume) an evaluation grid and write results, tables and an efficiency profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import (
    CategoriesOpt,
    ForceProtocolOpt,
    GridBatchOpt,
    GridCheckpointOpt,
    GridDeviceOpt,
    GridModelOpt,
    GridPrecisionOpt,
    GridPretrainedOpt,
    GridRandomOpt,
    GridSetOpt,
    NoCacheOpt,
    NoFlopsOpt,
    NumWorkersOpt,
    OnErrorOpt,
    QuietOpt,
    RetryFailedOpt,
    RunFolderOpt,
)
from vlmad.cli.executor_opts import (
    CpusPerRowOpt,
    ExecutorOpt,
    GpusPerRowOpt,
    RayAddressOpt,
    RowRetriesOpt,
    executor_kwargs,
)
from vlmad_runtime.errors import VlmadError

HELP = (
    "Evaluate METHODS on datasets, per category, for every number of SHOTS and reference SEED.\n\n"
    "Writes OUT/results.jsonl (one row per method x category x shots x seed, with its full protocol), per-image "
    "scores in OUT/scores/, tables in OUT/tables/ (per class and macro mean, next to the published number when the "
    "protocol matches), OUT/efficiency.md and OUT/summary.md (start there).\n\n"
    "Rerunning the same command resumes: finished rows are kept and skipped, so a finished grid recomputes "
    "nothing.\n\n"
    "Zero-shot rows are deterministic and run once; seeds only drive the few-shot reference draw (K images of the "
    "train split, never test images).\n\n"
    "Example: vlmad benchmark --dataset mvtec --root /data/mvtec --methods winclip --shots 0,1,2,4 --seeds 0,1,2 "
    "--checkpoint vit_b_16_plus_240.safetensors --out runs/mvtec"
)


@app.command(help=HELP)
def benchmark(
    ctx: typer.Context,
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset", "-d", help="Dataset kind: mvtec, visa or folder (repeat with --root for several datasets)."
        ),
    ],
    root: Annotated[list[Path], typer.Option("--root", help="Dataset folder (one per --dataset, same order).")],
    out: RunFolderOpt,
    methods: Annotated[
        str | None,
        typer.Option("--methods", "-m", help="Comma-separated methods (see `vlmad models`; default: the first one)."),
    ] = None,
    shots: Annotated[str, typer.Option("--shots", help="Comma-separated shot counts; 0 = zero-shot.")] = "0",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated reference-draw seeds (few-shot only).")] = "0",
    categories: CategoriesOpt = None,
    model: GridModelOpt = None,
    pretrained: GridPretrainedOpt = None,
    checkpoint: GridCheckpointOpt = None,
    random_weights: GridRandomOpt = False,
    sets: GridSetOpt = None,
    device: GridDeviceOpt = "cpu",
    precision: GridPrecisionOpt = None,
    batch_size: GridBatchOpt = 8,
    num_workers: NumWorkersOpt = 2,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="First N test images per category, balanced normal/anomalous (quick runs)."
        ),
    ] = None,
    eval_resolution: Annotated[
        str,
        typer.Option("--eval-resolution", help="Pixel metrics at 'input' (model input size), 'original' or N pixels."),
    ] = "input",
    aupro: Annotated[
        str,
        typer.Option("--aupro", help="exact (MVTec definition), legacy200 (research repos' approximation) or both."),
    ] = "exact",
    on_error: OnErrorOpt = "skip",
    force_protocol: ForceProtocolOpt = False,
    retry_failed: RetryFailedOpt = False,
    no_cache: NoCacheOpt = False,
    no_flops: NoFlopsOpt = False,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    cpus_per_row: CpusPerRowOpt = 1.0,
    gpus_per_row: GpusPerRowOpt = 0.0,
    row_retries: RowRetriesOpt = 2,
) -> None:
    from vlmad.bench import BenchmarkConfig, build_method_specs, run_benchmark
    from vlmad.bench.protocol import parse_aupro, parse_eval_resolution, parse_int_list
    from vlmad.cli.common import console
    from vlmad.methods.registry import default_method

    if len(dataset) != len(root):
        raise VlmadError(
            f"{len(dataset)} --dataset but {len(root)} --root", "give one --root per --dataset, in the same order"
        )
    parse_aupro(aupro)
    specs = build_method_specs(
        methods or default_method(), model, pretrained, checkpoint, random_weights, precision, sets
    )
    datasets = _datasets(dataset, root, categories)
    config = BenchmarkConfig(
        out=out,
        datasets=datasets,
        methods=specs,
        shots=parse_int_list(shots, "shots"),
        seeds=parse_int_list(seeds, "seeds"),
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        limit=limit,
        eval_resolution=parse_eval_resolution(eval_resolution),
        aupro=aupro,
        on_error=on_error,
        force_protocol=force_protocol,
        retry_failed=retry_failed,
        use_cache=not no_cache,
        flops=not no_flops,
        progress=not quiet,
        argv=command_line(ctx),
        **executor_kwargs(executor, ray_address, cpus_per_row, gpus_per_row, row_retries),
    )
    on_interrupt(
        f"finished rows are kept in {out / 'results.jsonl'}; rerun the same command to resume (nothing "
        "finished is recomputed)"
    )
    run_dir = run_benchmark(config)
    console.print(f"results: {run_dir / 'results.jsonl'}")
    console.print(
        f"summary: {run_dir / 'summary.md'} (tables in {run_dir / 'tables'}, efficiency in {run_dir / 'efficiency.md'})"
    )


def command_line(ctx: typer.Context) -> list[str]:
    """The command as typed, rebuilt from the parsed options (correct under any launcher or test runner); shown
    with :func:`shlex.join` it can be pasted back into a shell."""
    argv = ["vlmad", ctx.info_name or "benchmark"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":  # positional: written as typed, never as a flag
            argv += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]
            continue
        if value is None or value == param.default or param.name == "ctx":
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                argv.append(flag)
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            argv += [flag, str(v)]
    return argv


def _datasets(kinds: list[str], roots: list[Path], categories: str | None):
    from vlmad.bench import DatasetSpec
    from vlmad.bench.specs import split_names
    from vlmad.data import load_dataset

    names = split_names(categories)
    if not names:
        return [DatasetSpec(k, r, None) for k, r in zip(kinds, roots, strict=True)]
    if len(kinds) == 1:
        return [
            DatasetSpec(kinds[0], roots[0], [n.split(":", 1)[-1] if n.startswith(f"{kinds[0]}:") else n for n in names])
        ]
    out, used = [], set()
    for kind, root in zip(kinds, roots, strict=True):
        available = set(load_dataset(kind, root).categories)
        chosen = []
        for n in names:
            qual, sep, bare = n.partition(":")
            if sep and qual != kind:
                continue
            name = bare if sep else n
            if name in available:
                chosen.append(name)
                used.add(n)
        if chosen:
            out.append(DatasetSpec(kind, root, chosen))
    unknown = [n for n in names if n not in used]
    if unknown:
        raise VlmadError(
            f"category {unknown[0]!r} is in none of the datasets",
            "check --categories (use kind:name to pick a dataset)",
        )
    return out
