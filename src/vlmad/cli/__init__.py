"""`vlmad` command-line entry point.

The Typer app lives here; each concern registers its commands from its own module (imported at the bottom) so
that the CLI stays one thin layer over the library. Command modules import torch and friends inside the command
functions only, so `vlmad --help` and `vlmad <cmd> --help` stay well under a second
(measured by benchmarks/cli_startup.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

app = typer.Typer(
    name="vlmad",
    help="Zero- and few-shot industrial anomaly detection with vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _flags_without_type(self, ctx) -> str | None:
    """Typer labels on/off flags `<bool>` in help, as if they took a value; show no type for them."""
    return None if getattr(self, "is_flag", False) else _typed(self, ctx)


_typed = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flags_without_type  # type: ignore[method-assign]

#: what an interrupted command keeps and how to resume it; set by the running command (see on_interrupt)
_INTERRUPT_NOTE: list[str] = []


def on_interrupt(note: str) -> None:
    """Declare what Ctrl-C would leave behind (e.g. "finished rows are kept in OUT; rerun the same command to
    resume"); printed by :func:`main` when the user interrupts."""
    _INTERRUPT_NOTE[:] = [note]


def _version(value: bool) -> None:
    if value:
        from vlmad_runtime.version import __version__

        typer.echo(f"vlmad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit."
    ),
) -> None:
    """Zero- and few-shot industrial anomaly detection with vision-language models."""


def run(args: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code.

    The click command runs outside Typer's own main loop, because that loop turns Ctrl-C into a silent exit 130
    before vlmad could say what was kept; user errors become message + hint, never a traceback.
    """
    from rich.console import Console
    from typer import rich_utils
    from typer._click.exceptions import ClickException
    from typer.exceptions import Abort, Exit

    from vlmad_runtime.errors import VlmadError

    command = typer.main.get_command(app)
    console = Console(stderr=True, soft_wrap=True)
    _INTERRUPT_NOTE.clear()
    try:
        with command.make_context("vlmad", list(sys.argv[1:] if args is None else args)) as ctx:
            command.invoke(ctx)
        return 0
    except Exit as err:
        return err.exit_code
    except ClickException as err:
        rich_utils.rich_format_error(err)  # the usage error panel (help itself was printed already)
        return err.exit_code
    except VlmadError as err:
        console.print(f"[bold red]error:[/] {err.message}", highlight=False)
        if err.hint:
            console.print(f"[yellow]hint:[/] {err.hint}", highlight=False)
        return 2
    except (KeyboardInterrupt, Abort):
        note = _INTERRUPT_NOTE[0] if _INTERRUPT_NOTE else "nothing was written"
        console.print(f"\n[yellow]interrupted[/]: {note}", highlight=False)
        return 130


def main() -> None:
    """Console-script entry (`vlmad` and `python -m vlmad`)."""
    sys.exit(run())


# command modules register themselves on `app`
from vlmad.cli import commands  # noqa: E402,F401
