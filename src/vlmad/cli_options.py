"""The command-line option declarations shared by the commands, each once as an ``Annotated`` alias.

A module outside the :mod:`vlmad.cli` package so that command modules that live elsewhere (the `vlmad train`
commands in :mod:`vlmad.training.cli`, loaded while :mod:`vlmad.cli` registers its commands) can import them
without an import cycle; :mod:`vlmad.cli.common` re-exports every name. Layer 5 in docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
