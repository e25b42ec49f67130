"""The shape of the code base (docs/architecture.md), checked on the source files without importing them.

* no method name as a string literal outside ``vlmad.methods`` / ``vlmad.training`` (everything else asks the
  method's spec);
* the layer map: a package imports only packages of its own layer or below (lazy imports inside functions count);
* no import cycle between modules;
* ``vlmad_runtime`` imports no vlmad, torch or open_clip;
* function bodies stay under 60 lines of code, except the explicit, justified list below.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RUNTIME = REPO / "runtime" / "src"
METHOD_NAMES = {"winclip", "aprilgan", "anomalyclip"}

#: files allowed to spell a method name, and why
NAME_LITERAL_EXCEPTIONS = {
    "src/vlmad/prompts.py": "the papers' prompt ensembles are data named after their paper, not method dispatch",
}

#: layer of each package (a module may import from its own layer and the layers below)
LAYERS: dict[str, int] = {
    "vlmad_runtime": 0,
    "vlmad_runtime.serve": 0,  # the HTTP service of both serve commands: torch-free, runs a ServedModel
    "vlmad.prompts": 1,
    "vlmad.metrics": 1,
    "vlmad.data": 1,
    "vlmad.backbones": 1,
    "vlmad.provenance": 1,
    "vlmad.fingerprint": 1,
    "vlmad.methods": 2,
    "vlmad.training": 2,
    "vlmad.bench": 3,
    "vlmad.jobs": 3,
    "vlmad.serve": 3,  # only the torch adapter (DetectorModel) of the runtime's service
    "vlmad.testing": 3,
    "vlmad.study": 4,
    "vlmad.report": 4,
    "vlmad.demo": 5,  # a scripted CLI session (console output, progress bars)
    "vlmad.cli": 5,
    "vlmad.__main__": 5,
    "vlmad": 5,
    "vlmad.cli_options": 5,  # the shared option aliases, outside vlmad.cli so training.cli imports them cycle-free
    "vlmad.training.cli": 5,  # the `vlmad train aprilgan` command, kept next to its training code
    "vlmad.export.trunk": 1,  # torch modules over a backbone, shared by the methods' export graphs
}

#: upward imports allowed, and why ((importer, imported) -> reason); none today: a new one needs a reason here
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {}

#: import cycles allowed, and why (each entry: the modules of one strongly connected component); none today
CYCLE_EXCEPTIONS: dict[frozenset[str], str] = {}
#: packages whose modules may import each other in a loop, and why
CYCLE_PACKAGES = {
    "vlmad.cli": "Typer registration: vlmad.cli defines `app`, then imports the command modules that attach to it",
}

MAX_FUNCTION_LINES = 60
#: functions allowed over the limit, and why (``path::name``)
PENDING_SPLIT = "over 60 lines since `ruff format` was applied: being split"
LONG_FUNCTION_EXCEPTIONS = {}


def _py_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> str:
    root = RUNTIME if RUNTIME in path.parents else SRC
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST) -> list[str]:
    """Every module named by an import anywhere in ``tree`` (lazy imports included, TYPE_CHECKING blocks not)."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"{node.module}.{a.name}" for a in node.names]
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts as a.b when b is a module)."""
    files = {_module_name(p): p for p in _py_files(SRC, RUNTIME)}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for name in _imported_names(ast.parse(path.read_text())):
            target = name  # `from a import b`: a.b when b is a module, else a (the nearest module above)
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != mod:
                graph[mod].add(target)
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to docs/architecture.md)")


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_no_method_name_literals_outside_methods():
    """CLI, bench, study, report and serve ask the spec; only methods/ and training/ spell method names."""
    allowed_dirs = (SRC / "vlmad" / "methods", SRC / "vlmad" / "training")
    offenders = []
    for path in _py_files(SRC / "vlmad", RUNTIME):
        if any(d in path.parents for d in allowed_dirs) or _rel(path) in NAME_LITERAL_EXCEPTIONS:
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type != tokenize.STRING or tok.string.lstrip("rbuRBU")[:1] not in "'\"":
                continue
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str) and value.strip().lower() in METHOD_NAMES:
                offenders.append(f"{_rel(path)}:{tok.start[0]}: {tok.string}")
    assert not offenders, (
        "method names outside methods/ and training/ (ask vlmad.methods.registry.get_spec):\n" + "\n".join(offenders)
    )


def test_layer_map():
    """A package imports only from its own layer or below (docs/architecture.md has the picture)."""
    graph = import_graph()
    bad = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if _layer(b) > _layer(a) and (a, b) not in UPWARD_EXCEPTIONS
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)
    stale = sorted(pair for pair in UPWARD_EXCEPTIONS if pair[1] not in graph.get(pair[0], set()))
    assert not stale, f"listed as allowed upward imports but gone (drop them): {stale}"


def test_no_import_cycles():
    components = strongly_connected(import_graph())
    cycles = [
        c
        for c in components
        if not any(c <= allowed for allowed in CYCLE_EXCEPTIONS)
        and not any(all(m == p or m.startswith(p + ".") for m in c) for p in CYCLE_PACKAGES)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)
    stale = [sorted(allowed) for allowed in CYCLE_EXCEPTIONS if not any(c & allowed for c in components)]
    assert not stale, f"listed as allowed cycles but gone (drop them): {stale}"


def test_cycle_finder_finds_a_cycle():
    """The checker itself: a planted cycle is found, a chain is not."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("forbidden", ["vlmad", "torch", "open_clip"])
def test_runtime_imports_no_vlmad_torch_open_clip(forbidden):
    bad = []
    for path in _py_files(RUNTIME):
        for name in _imported_names(ast.parse(path.read_text())):
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(f"{_rel(path)} imports {name}")
    assert not bad, "\n".join(bad)


def _long_functions() -> dict[str, int]:
    out: dict[str, int] = {}
    for path in _py_files(SRC, RUNTIME):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body = body[1:]  # the docstring
            if not body:
                continue
            code = [
                ln
                for ln in lines[body[0].lineno - 1 : node.end_lineno]
                if ln.strip() and not ln.strip().startswith("#")
            ]
            if len(code) > MAX_FUNCTION_LINES:
                out[f"{_rel(path)}::{node.name}"] = len(code)
    return out


def test_function_length():
    """Every function body is under 60 lines of code, or listed (with a reason) in LONG_FUNCTION_EXCEPTIONS."""
    found = _long_functions()
    new = {k: v for k, v in found.items() if k not in LONG_FUNCTION_EXCEPTIONS}
    assert not new, "functions over 60 lines of code (split them):\n" + "\n".join(
        f"{k}: {v} lines" for k, v in sorted(new.items(), key=lambda kv: -kv[1])
    )
    assert all(reason.strip() for reason in LONG_FUNCTION_EXCEPTIONS.values())
    stale = sorted(k for k in LONG_FUNCTION_EXCEPTIONS if k not in found)
    assert not stale, f"listed as long but no longer over {MAX_FUNCTION_LINES} lines (drop them): {stale}"


def test_the_service_is_written_once_in_the_runtime():
    """`vlmad serve` and `vlmad-runtime serve` run one service (vlmad_runtime.serve); vlmad keeps the adapter."""
    folder = SRC / "vlmad" / "serve"
    assert not [p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert {p.name for p in folder.glob("*.py")} == {
        "__init__.py",
        "detector_model.py",
    }
    assert (RUNTIME / "vlmad_runtime" / "serve" / "static" / "index.html").is_file()
