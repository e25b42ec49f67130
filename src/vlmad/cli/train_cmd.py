"""`vlmad train METHOD`: one subcommand per method whose spec declares a training command (``train_cli``).

The command functions live next to the training code (e.g. :mod:`vlmad.training.cli`); this module only mounts
them, so a plugin with a learned artefact gets its `vlmad train NAME` without touching the CLI.
"""

from __future__ import annotations

import typer

from vlmad.cli import app
from vlmad.methods.registry import method_specs
from vlmad.methods.spec import load_object

train_app = typer.Typer(
    help="Train the learned parts of methods (projection heads, learned prompts).", no_args_is_help=True
)
app.add_typer(train_app, name="train")


def register_train_commands() -> None:
    """Mount ``vlmad train NAME`` for every registered method with a ``train_cli`` entry."""
    for spec in method_specs():
        if spec.train_cli:
            train_app.command(spec.name)(load_object(spec.train_cli))


register_train_commands()
