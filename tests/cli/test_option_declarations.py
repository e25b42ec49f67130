"""Each command-line option shared by several commands is declared once, in ``vlmad/cli_options.py`` (or
``cli/executor_opts.py``), as an ``Annotated`` alias: a command module that spells such a flag again in its own
``typer.Option`` would drift (help text, default, short form) from the others. Checked on the source files."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vlmad"
CLI = SRC / "cli"
SHARED_MODULES = (SRC / "cli_options.py", CLI / "executor_opts.py")
#: command modules outside vlmad/cli (the `vlmad train` commands live next to their training code)
OTHER_COMMAND_MODULES = (SRC / "training" / "cli.py",)

#: (module, flag) a command still declares itself, and why (same flag, another meaning or type there)
OWN_MEANING = {
    ("*", "--out"): "what --out names differs per command (run folder, bundle folder, deploy.json, dataset folder)",
    ("study_cmd.py", "--class-name"): "calibrate's is optional and defaults to its --category",
    ("study_cmd.py", "--artefact"): "a study takes several artefact files (one configuration each)",
    ("study_cmd.py", "--heads"): "the old name of the study's --artefact",
    ("study_cmd.py", "--device"): "report: only for recomputing gallery maps, default the study's device",
    ("bench_cmd.py", "--dataset"): "a benchmark takes several datasets (one per --root)",
    ("data_cmd.py", "--categories"): "the categories to generate, with the generator's defaults",
    ("detect_cmd.py", "--executor"): "detect's Ray executor is a Ray Data pipeline over detector actors",
    ("export_cmd.py", "--precision"): "the bundle's precision (fp16/int8 through OpenVINO), not the torch one",
    ("export_cmd.py", "--deploy"): "stored in the bundle, not used for decisions here",
    ("cli.py", "--categories"): "training takes a plain subset of one dataset's categories (no kind:name)",
}


def _option_flags(path: Path) -> list[tuple[str, int]]:
    """(flag, line) of every ``typer.Option("--flag", ...)`` call in a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("typer.Option", "Option"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    out.append((arg.value, node.lineno))
    return out


def _shared_flags() -> set[str]:
    return {flag for path in SHARED_MODULES for flag, _ in _option_flags(path)}


def test_shared_options_are_declared_once():
    shared = _shared_flags()
    assert {"--model", "--pretrained", "--device", "--precision", "--prompt-set", "--artefact"} <= shared
    again = [
        f"{path.name}:{line}: {flag}"
        for path in [*sorted(CLI.glob("*.py")), *OTHER_COMMAND_MODULES]
        if path not in SHARED_MODULES
        for flag, line in _option_flags(path)
        if flag in shared and (path.name, flag) not in OWN_MEANING and ("*", flag) not in OWN_MEANING
    ]
    assert not again, "declared again instead of using the alias in vlmad/cli_options.py:\n" + "\n".join(again)
    assert all(reason.strip() for reason in OWN_MEANING.values())


def test_the_finder_sees_a_declaration(tmp_path):
    """The checker itself: a planted re-declaration is found."""
    planted = tmp_path / "x_cmd.py"
    planted.write_text('import typer\ndef f(d: str = typer.Option("cpu", "--device")): ...\n')
    assert _option_flags(planted) == [("--device", 2)]
