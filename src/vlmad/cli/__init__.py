"""`vlmad` command-line entry point.

The Typer app lives here; each concern registers its commands from its own module (imported at the bottom) so
that the CLI stays one thin layer over the library.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="vlmad",
    help="Zero- and few-shot industrial anomaly detection with vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry: user errors are printed as message + hint, never as a traceback."""
    from rich.console import Console

    from vlmad_runtime.errors import VlmadError

    try:
        app()
    except VlmadError as err:
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"[bold red]error:[/] {err.message}", highlight=False)
        if err.hint:
            console.print(f"[yellow]hint:[/] {err.hint}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]: finished results are kept on disk")
        sys.exit(130)


# command modules register themselves on `app`
from vlmad.cli import commands  # noqa: E402,F401
