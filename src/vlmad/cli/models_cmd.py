"""`vlmad models` and `vlmad fetch-weights`: what can run, and getting weights onto an offline machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vlmad.cli import app
from vlmad.cli.common import ArchOpt, PretrainedTagOpt, console


@app.command()
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Also list every open_clip architecture and tag.")] = False,
) -> None:
    """List the methods with their default backbones (`--all`: every open_clip architecture with its tags)."""
    from rich.console import Console

    from vlmad.methods.registry import method_specs

    out = Console()
    methods = Table(title="methods and their default backbones")
    for col in ("method", "default model", "default pretrained", "notes"):
        methods.add_column(col)
    for spec in method_specs():
        notes = [f"{k}={v}" for k, v in spec.backbone_defaults.items()]
        notes += [f"--artefact: {spec.artefact.help}"] if spec.artefact else []
        methods.add_row(spec.name, spec.default_model or "-", spec.default_pretrained or "-", ", ".join(notes))
    out.print(methods)
    if not all_models:
        out.print(
            "Any open_clip architecture works with --model (with --pretrained TAG or --checkpoint FILE); "
            "`vlmad models --all` lists them with their pretrained tags."
        )
        return
    _print_architectures(out)


def _print_architectures(out) -> None:
    """Every open_clip architecture: the ones with pretrained tags first, then the rest (loading open_clip
    costs seconds, so only `--all` does it)."""
    from vlmad.backbones import list_architectures, list_pretrained

    tags: dict[str, list[str]] = {}
    for arch, tag in list_pretrained():
        tags.setdefault(arch, []).append(tag)
    archs = list_architectures()
    for title, group in (
        ("architectures with pretrained weights", [a for a in archs if tags.get(a)]),
        ("architectures without pretrained tags (random init or --checkpoint)", [a for a in archs if not tags.get(a)]),
    ):
        table = Table(title=title)
        table.add_column("architecture")
        table.add_column("pretrained tags")
        for arch in group:
            table.add_row(arch, ", ".join(tags.get(arch, [])) or "-")
        out.print(table)


@app.command("fetch-weights")
def fetch_weights(
    model: ArchOpt = "ViT-B-16-plus-240",
    pretrained: PretrainedTagOpt = "laion400m_e31",
    out: Annotated[Path | None, typer.Option("--out", help="Target .safetensors file.")] = None,
) -> None:
    """Download pretrained weights (needs network) and save them as a safetensors checkpoint for --checkpoint."""
    from safetensors.torch import save_file

    from vlmad.backbones.loading import resolve_model

    target = out or Path(f"{model}-{pretrained}.safetensors")
    with console.status(f"downloading {model}/{pretrained}"):
        net, _ = resolve_model(model, pretrained=pretrained)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if k != "attn_mask"}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata={"arch": model, "pretrained": pretrained})
    console.print(f"saved {target} — use it with --model {model} --checkpoint {target}")
