"""`vlmad study`, `vlmad report` and `vlmad calibrate`: evaluation campaigns, their report, deployment thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import (
    ArtefactOpt,
    BatchOpt,
    CategoriesOpt,
    CheckpointOpt,
    DatasetKindOpt,
    DeviceOpt,
    ForceProtocolOpt,
    GridBatchOpt,
    GridCheckpointOpt,
    GridDeviceOpt,
    GridModelOpt,
    GridPrecisionOpt,
    GridPretrainedOpt,
    GridRandomOpt,
    GridSetOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    NoFlopsOpt,
    NumWorkersOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    QuietOpt,
    RandomOpt,
    ReferenceDirOpt,
    ReferenceOpt,
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

_PRESET_BLURBS = {
    "seed-full": "the papers' full protocol",
    "prompt-ablation": "prompt-ensemble ablation",
    "quick": "everything, small, in minutes",
}


def _preset_help() -> str:
    # the preset files are listed without importing vlmad.study (which loads torch): `--help` stays fast
    names = sorted(p.stem for p in (Path(__file__).parents[1] / "study" / "presets").glob("*.yaml"))
    return ", ".join(f"{n} ({_PRESET_BLURBS[n]})" if n in _PRESET_BLURBS else n for n in names)


STUDY_HELP = (
    "Run (or resume) a study: the main grid, its ablations, threshold calibration and the report.\n\n"
    "SPEC is a preset name or a YAML file. Presets: " + _preset_help() + ".\n\n"
    "Writes into OUT: results.jsonl + scores/ (as `vlmad benchmark`), deploy/<dataset>/<class>/<method>-<K>shot.json "
    "(calibrated thresholds for `vlmad detect --deploy`), report.html (one self-contained file), report.md and "
    "study.json. Rerunning resumes; a finished study recomputes nothing.\n\n"
    "Example: vlmad study quick --root mvtec=/data/mvtec --root visa=/data/visa --out runs/quick\n\n"
    "Tiny smoke run: vlmad study quick --root mvtec=D1 --root visa=D2 --model vlmad-tiny-vit --random-weights --out R"
)


def _parse_roots(values: list[str] | None) -> dict[str, Path] | list[Path]:
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for raw in values or []:
        kind, sep, path = str(raw).partition("=")
        if sep and kind and "/" not in kind and "\\" not in kind:
            if kind in named:
                raise VlmadError(f"--root {kind}= given twice")
            named[kind.lower()] = Path(path).expanduser()
        else:
            plain.append(Path(raw).expanduser())
    if named and plain:
        raise VlmadError("mix of --root KIND=PATH and plain --root PATH", "write every root as KIND=PATH")
    return named if named or not plain else plain


@app.command(help=STUDY_HELP)
def study(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="Preset name (seed-full, prompt-ablation, quick) or a YAML spec file.")],
    out: RunFolderOpt,
    root: Annotated[
        list[str] | None,
        typer.Option(
            "--root", help="Dataset folder as KIND=PATH, e.g. --root mvtec=/data/mvtec --root visa=/data/visa."
        ),
    ] = None,
    datasets: Annotated[
        str | None,
        typer.Option("--datasets", help="Comma-separated subset of the spec's datasets (the others need no --root)."),
    ] = None,
    categories: CategoriesOpt = None,
    model: GridModelOpt = None,
    pretrained: GridPretrainedOpt = None,
    checkpoint: GridCheckpointOpt = None,
    random_weights: GridRandomOpt = False,
    heads: Annotated[
        list[Path] | None,
        typer.Option(
            "--artefact",
            "--heads",
            help="Artefact file of the methods that load one, e.g. APRIL-GAN heads (repeat: "
            "one configuration per file, e.g. trained on VisA and on MVTec AD).",
        ),
    ] = None,
    sets: GridSetOpt = None,
    precision: GridPrecisionOpt = None,
    shots: Annotated[str | None, typer.Option("--shots", help="Override the spec's main-grid shots, e.g. 0,1.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Override the spec's reference seeds.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Override the spec's test images per category (balanced).")
    ] = None,
    device: GridDeviceOpt = "cpu",
    batch_size: GridBatchOpt = 8,
    num_workers: NumWorkersOpt = 2,
    force_protocol: ForceProtocolOpt = False,
    retry_failed: RetryFailedOpt = False,
    no_cache: NoCacheOpt = False,
    no_flops: NoFlopsOpt = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write the report at the end.")] = False,
    quiet: QuietOpt = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    cpus_per_row: CpusPerRowOpt = 1.0,
    gpus_per_row: GpusPerRowOpt = 0.0,
    row_retries: RowRetriesOpt = 2,
) -> None:
    from vlmad.bench.protocol import parse_int_list
    from vlmad.bench.specs import split_names
    from vlmad.cli.bench_cmd import command_line
    from vlmad.cli.common import console
    from vlmad.study import StudyOptions, load_study_spec, run_study

    study_spec = load_study_spec(spec)
    roots = _parse_roots(root)
    if isinstance(roots, list):
        wanted = split_names(datasets) or study_spec.dataset_kinds()
        if len(roots) != 1 or len(wanted) != 1:
            raise VlmadError(
                "--root PATH without KIND= is only accepted for a single dataset",
                f"write --root {study_spec.dataset_kinds()[0]}=PATH",
            )
        roots = {wanted[0]: roots[0]}
    options = StudyOptions(
        out=out,
        roots=roots,
        datasets=split_names(datasets) or None,
        categories=split_names(categories) or None,
        model=model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        random_weights=random_weights,
        precision=precision,
        sets=sets,
        heads=[str(h) for h in heads or []],
        shots=parse_int_list(shots, "shots") if shots else None,
        seeds=parse_int_list(seeds, "seeds") if seeds else None,
        limit=limit,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        force_protocol=force_protocol,
        retry_failed=retry_failed,
        use_cache=not no_cache,
        flops=not no_flops,
        progress=not quiet,
        report=not no_report,
        argv=command_line(ctx),
        **executor_kwargs(executor, ray_address, cpus_per_row, gpus_per_row, row_retries),
    )
    on_interrupt(
        f"finished rows are kept in {out / 'results.jsonl'}; rerun the same command to resume (nothing "
        "finished is recomputed)"
    )
    log = (lambda m: None) if quiet else (lambda m: console.print(m, highlight=False))
    run_dir = run_study(study_spec, options, log=log)
    console.print(f"results: {run_dir / 'results.jsonl'}")
    if not no_report and quiet:  # otherwise the report step has printed it
        console.print(f"report: {run_dir / 'report.html'} (+ report.md)")
    if (run_dir / "deploy").is_dir():
        console.print(f"deploy files: {run_dir / 'deploy'}")


@app.command(help="Write report.html (self-contained) and report.md for a study or benchmark run folder.")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by `vlmad study` or `vlmad benchmark`.")],
    no_gallery: Annotated[
        bool,
        typer.Option("--no-gallery", help="Skip the heatmap gallery (it rebuilds detectors to recompute a few maps)."),
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="Device for recomputing gallery maps (default: the study's).")
    ] = None,
) -> None:
    from vlmad.bench.results import RESULTS_FILE
    from vlmad.cli.common import console
    from vlmad.report.build import build_report

    if not (run_dir / RESULTS_FILE).is_file():
        raise VlmadError(
            f"no {RESULTS_FILE} in {run_dir}", "pass the --out folder of `vlmad study` or `vlmad benchmark`"
        )
    from vlmad.report.build import compute_gallery_maps
    from vlmad.study.factory import StudyDetectorFactory

    def log(m: str) -> None:
        console.print(m, highlight=False)

    if not no_gallery:  # maps of gallery images not stored yet (e.g. a plain benchmark folder)
        compute_gallery_maps(run_dir, StudyDetectorFactory(), device, log)
    build_report(run_dir, gallery=not no_gallery, log=log)


CALIBRATE_HELP = (
    "Pick a deployment threshold and write deploy.json (for `vlmad detect --deploy` and the service).\n\n"
    "From normal images only: --normal-dir DIR (held-out normals, not the references) -> the --quantile of their "
    "scores; the expected false-alarm rate is the split-conformal bound (n + 1 - k) / (n + 1).\n\n"
    "From a labelled split: --dataset KIND --root PATH --category C [--split test] -> the F1-optimal threshold "
    "(--mode normal-quantile uses the split's normal images instead; default split then: train).\n\n"
    "Few-shot: pass the references the deployment will use (--reference / --reference-dir), or with --dataset draw "
    "them from the train split with --shots K --seed S (as the benchmark does); they are never calibration images.\n\n"
    "Example: vlmad calibrate --class-name bottle --normal-dir held_out_good/ --quantile 0.99 "
    "--checkpoint w.safetensors --out deploy.json"
)


@app.command(help=CALIBRATE_HELP)
def calibrate(
    out: Annotated[Path, typer.Option("--out", "-o", help="deploy.json to write.")],
    class_name: Annotated[
        str | None, typer.Option("--class-name", "-c", help="Object class used in the prompts (default: --category).")
    ] = None,
    normal_dir: Annotated[
        Path | None,
        typer.Option("--normal-dir", help="Folder of held-out normal images (normal-quantile calibration)."),
    ] = None,
    quantile: Annotated[float, typer.Option("--quantile", help="Share of normal images below the threshold.")] = 0.99,
    dataset: DatasetKindOpt = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder (with --dataset).")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Category of the dataset.")] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Dataset split (default: test for f1-optimal, train for normal-quantile)."),
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="f1-optimal (default with --dataset) or normal-quantile.")
    ] = None,
    shots: Annotated[
        int,
        typer.Option(
            "--shots", min=0, help="With --dataset: draw K references from the train split (seeded, as the benchmark)."
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Reference draw seed (with --shots).")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use at most N calibration images.")] = None,
    method: MethodOpt = None,
    reference: ReferenceOpt = None,
    reference_dir: ReferenceDirOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    heads: ArtefactOpt = None,
    prompt_set: PromptOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = 8,
    no_cache: NoCacheOpt = False,
    pixel_fp_rate: Annotated[
        float,
        typer.Option(
            "--pixel-fp-rate",
            min=1e-6,
            max=0.5,
            help="Target share of a normal image's pixels above the pixel "
            "threshold (defect masks, heatmap colour bar).",
        ),
    ] = 0.001,
) -> None:
    from vlmad.cli.common import build_detector, console
    from vlmad.cli.inputs import collect_images
    from vlmad.study.calibration import (
        CalibrationRequest,
        calibrate_detector,
        calibration_set,
        check_calibration_source,
    )

    check_calibration_source(normal_dir, dataset)
    # the same expansion as `vlmad detect`, so both see the same reference set (fingerprint)
    refs = collect_images(([reference_dir] if reference_dir else []) + list(reference or []))
    req = CalibrationRequest(
        class_name=class_name,
        normal_dir=normal_dir,
        quantile=quantile,
        dataset=dataset,
        root=root,
        category=category,
        split=split,
        mode=mode,
        shots=shots,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
        pixel_fp_rate=pixel_fp_rate,
    )
    cset = calibration_set(req, refs)
    detector = build_detector(
        method,
        model,
        pretrained,
        checkpoint,
        random_weights,
        device,
        precision,
        prompt_set,
        no_cache,
        heads,
        batch_size,
    )
    result = calibrate_detector(detector, cset, req, out, method, status=console.status)
    _print_calibration(result, cset, out, pixel_fp_rate)
    if detector.info().random_weights:
        from vlmad.cli.common import warn_random_weights

        warn_random_weights()


def _print_calibration(result: Any, cset: Any, out: Path, pixel_fp_rate: float) -> None:
    """What `vlmad calibrate` chose and what it could not read."""
    from vlmad.cli.common import console

    record, cal, pixel = result.record, result.calibration, result.pixel
    far = record["expected_false_alarm_rate"]
    n = cal.details["n_images"]
    console.print(
        f"{n} calibration image(s) after excluding {len(cset.refs)} reference(s); at best they support a "
        f"false-alarm rate of {100 / (n + 1):.2f} % (1 / (n + 1))"
    )
    console.print(
        f"threshold {record['threshold']:.6g} ({cset.mode}, {n} image(s)); expected "
        f"false-alarm rate {'n/a' if far is None else f'{100 * far:.2f} %'} -> {out}"
    )
    if pixel is None:
        console.print("[yellow]no normal image to calibrate the heatmap scale / pixel threshold on[/]")
    else:
        console.print(
            f"heatmap scale [{pixel.map_scale[0]:.4g}, {pixel.map_scale[1]:.4g}], pixel threshold "
            f"{pixel.pixel_threshold:.4g} at {100 * pixel_fp_rate:g} % normal pixels"
        )
    if cal.details.get("note"):
        console.print(f"[yellow]note:[/] {cal.details['note']}")
    for p, e in result.failed:
        console.print(f"[yellow]skipped[/] {p}: {e}")
