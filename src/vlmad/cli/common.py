"""Options and helpers shared by the CLI commands (weights choice, detector construction, console)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

# the option aliases, re-exported: declared in vlmad/cli_options.py (importable without loading this package)
from vlmad.cli_options import *  # noqa: F403

console = Console(stderr=True, soft_wrap=True)


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
