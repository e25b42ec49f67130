"""The small things a new user trips over: a recorded command that pastes back, case-insensitive suggestions."""

from __future__ import annotations

import shlex

import pytest
import typer

from vlmad.cli import app
from vlmad.cli.bench_cmd import command_line


@pytest.mark.parametrize(
    "name, args",
    [
        ("study", ["quick", "--out", "runs/a b", "--root", "mvtec=/data/mv tec", "--random-weights", "--shots", "0,1"]),
        (
            "benchmark",
            [
                "--dataset",
                "mvtec",
                "--root",
                "/d",
                "--out",
                "o",
                "--model",
                "winclip=vlmad-tiny-vit",
                "--categories",
                "bottle",
                "--quiet",
            ],
        ),
    ],
)
def test_recorded_command_parses_back_to_the_same_options(name, args):
    command = typer.main.get_command(app).commands[name]
    ctx = command.make_context(name, list(args))
    argv = command_line(ctx)
    assert argv[:2] == ["vlmad", name]
    pasted = shlex.split(shlex.join(argv))
    again = command.make_context(name, pasted[2:])
    assert again.params == ctx.params
    if name == "study":
        assert argv[2] == "quick" and "--spec" not in argv


def test_unknown_model_suggests_the_right_spelling_whatever_the_case():
    from vlmad.backbones.loading import resolve_model
    from vlmad_runtime.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as err:
        resolve_model("vit-b-16-plus-240", random_weights=True)
    assert "ViT-B-16-plus-240" in err.value.hint.split("similar:")[1].split(",")[0]
