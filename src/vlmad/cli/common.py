"""Options and helpers shared by the CLI commands (weights choice, detector construction, console)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)

# one vocabulary for every command (issue 16): -c is always the object class; --categories (no short form) picks
# dataset categories in benchmark/study/train; --dataset/-d + --root name a dataset; --out/-o is the output
ClassNameOpt = Annotated[str, typer.Option("--class-name", "-c", help="Object class, e.g. bottle or metal_nut.")]
OptionalClassNameOpt = Annotated[
    str | None, typer.Option("--class-name", "-c", help="Object class used in the prompts, e.g. bottle or metal_nut.")
]
CategoriesOpt = Annotated[
    str | None,
    typer.Option(
        "--categories", help="Comma-separated categories (all by default); 'kind:name' to target one dataset."
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option("--method", "-m", help="Detection method (see `vlmad models`; default: the first one listed)."),
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="open_clip architecture; default per method.")]
ReferenceOpt = Annotated[
    list[Path] | None, typer.Option("--reference", "-r", help="Normal reference image (repeat for K-shot).")
]
ReferenceDirOpt = Annotated[
    Path | None, typer.Option("--reference-dir", help="Directory of normal reference images (K-shot).")
]
PretrainedOpt = Annotated[
    str | None, typer.Option("--pretrained", help="Pretrained tag (downloaded via open_clip on first use).")
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Local weights: a .safetensors state dict of the architecture.")
]
RandomOpt = Annotated[
    bool, typer.Option("--random-weights", help="Smoke test with random init; scores are meaningless.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32 (default), int8 (CPU), fp16/bf16 (GPU).")]
PromptOpt = Annotated[str | None, typer.Option("--prompt-set", help="Named prompt set or a YAML/JSON file.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the text-embedding cache.")]
ArtefactOpt = Annotated[
    Path | None,
    typer.Option(
        "--artefact", "--heads", help="The method's artefact file, e.g. APRIL-GAN's trained heads (.safetensors)."
    ),
]
HeadsOpt = ArtefactOpt  # the option's old name
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
OnErrorOpt = Annotated[str, typer.Option("--on-error", help="Unreadable image: skip (recorded) or stop.")]
DeployOpt = Annotated[
    Path | None,
    typer.Option(
        "--deploy",
        help="deploy.json from `vlmad calibrate` -> decisions; refused when it was calibrated for another detector.",
    ),
]
ForceDeployOpt = Annotated[
    bool,
    typer.Option(
        "--force-deploy",
        help="Use --deploy even when it was calibrated for another detector or reference set; every such decision "
        "is labelled 'threshold not calibrated for this detector'.",
    ),
]
AllowUntrainedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-untrained",
        help="Run without the method's required artefact, e.g. random APRIL-GAN heads (smoke test only).",
    ),
]
# the weights of commands that always load one architecture (demo, fetch-weights): a value, not "per method"
ArchOpt = Annotated[str, typer.Option("--model", help="open_clip architecture.")]
PretrainedTagOpt = Annotated[str, typer.Option("--pretrained", help="Pretrained tag.")]
DatasetKindOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset kind: mvtec, visa or folder.")]


# options of the grid commands (benchmark, study): a value for all methods, or method=VALUE for one
GridModelOpt = Annotated[
    list[str] | None, typer.Option("--model", help="open_clip architecture, for all methods or as method=ARCH.")
]
GridPretrainedOpt = Annotated[
    list[str] | None, typer.Option("--pretrained", help="Pretrained tag, for all methods or as method=TAG.")
]
GridCheckpointOpt = Annotated[
    list[str] | None,
    typer.Option("--checkpoint", help="Local .safetensors weights, for all methods or as method=PATH."),
]
GridRandomOpt = Annotated[
    bool, typer.Option("--random-weights", help="Random init for every method: a smoke test, scores are meaningless.")
]
GridSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Method option method.key=value (or key=value for all), e.g. winclip.prompt_set=winclip-paper."
    ),
]
GridPrecisionOpt = Annotated[str | None, typer.Option("--precision", help="fp32 (default), int8, fp16, bf16.")]
RunFolderOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; reused to resume).")]
GridDeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
GridBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per predict call.")]
NumWorkersOpt = Annotated[int, typer.Option("--num-workers", min=0, help="Image loading threads (0: inline).")]
ForceProtocolOpt = Annotated[
    bool, typer.Option("--force-protocol", help="Run rows a method's protocol check refuses (labelled as forced).")
]
RetryFailedOpt = Annotated[bool, typer.Option("--retry-failed", help="Recompute rows recorded as refused or failed.")]
NoFlopsOpt = Annotated[bool, typer.Option("--no-flops", help="Skip the per-method FLOP count.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-row lines.")]


def artefact_kwargs(method: str | None, path: Path | str | None, skip: bool = False) -> dict[str, Any]:
    """Detector keywords for ``--artefact PATH`` (and ``--allow-untrained``) as the method's spec names them."""
    from vlmad.methods.registry import default_method, get_spec
    from vlmad_runtime.errors import VlmadError

    if path is None and not skip:
        return {}
    spec = get_spec(method or default_method())
    art = spec.artefact
    if art is None:
        raise VlmadError(f"{spec.name} loads no artefact file", "drop --artefact/--heads (or --allow-untrained)")
    out: dict[str, Any] = {art.option: str(path)} if path is not None else {}
    if skip and art.skip_option:
        out[art.skip_option] = True
    return out


def build_detector(
    method: str | None,
    model: str | None = None,
    pretrained: str | None = None,
    checkpoint: Path | None = None,
    random_weights: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
    prompt_set: str | None = None,
    no_cache: bool = False,
    heads: Path | None = None,
    batch_size: int = 8,
    extra: dict[str, Any] | None = None,
):
    """Create a detector from CLI options (exactly one weights source; defaults per method). ``heads`` is the
    ``--artefact`` file, passed under the keyword the method's spec names."""
    from vlmad.methods.registry import create_detector, default_method

    method = method or default_method()
    kwargs: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "use_cache": not no_cache,
        "batch_size": batch_size,
    }
    if model:
        kwargs["model"] = model
    if pretrained:
        kwargs["pretrained"] = pretrained
    if checkpoint is not None:
        kwargs["checkpoint"] = str(checkpoint)
    if random_weights:
        kwargs["random_weights"] = True
    if prompt_set:
        kwargs["prompt_set"] = prompt_set
    kwargs.update(artefact_kwargs(method, heads))
    kwargs.update(extra or {})
    with console.status(f"loading {method} ({model or 'default model'})"):
        detector = create_detector(method, **kwargs)
    if detector.info().random_weights:
        warn_random_weights()
    return detector


def warn_random_weights() -> None:
    from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

    console.print(f"[bold red]WARNING: {RANDOM_WEIGHTS_STAMP}[/] (smoke test of the pipeline only)")


@contextmanager
def progress(total: int, label: str, every_s: float = 10.0) -> Iterator[Callable[[int], None]]:
    """Per-item progress: a rich bar on a terminal, else a plain line after the first step, then every
    ``every_s`` seconds and at the end (logs and CI show that a long run is moving)."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    start = last = time.monotonic()
    done = 0

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if done == n or done >= total or now - last >= every_s:
            last = now
            rate = done / max(now - start, 1e-9)
            console.print(f"{label}: {done}/{total} ({now - start:.1f} s, {rate:.2f}/s)", highlight=False)

    yield advance
