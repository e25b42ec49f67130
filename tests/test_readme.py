"""Every `vlmad` command of README.md runs, in README order, on generated data and the tiny model.

Each command is taken from the README's ```bash blocks and run as written, with three rewrites that keep it
offline and quick (see :func:`rewrite`): the weights options become the tiny test model's checkpoint, the
`/data/...` dataset roots become generated datasets, and training runs 1 epoch (`epoch_015` -> `epoch_001`).
Commands that cannot run here are listed in EXCLUDED with the reason; a README command in neither group fails
the test, so a new README example is either run or explicitly excused.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmad.data.synthetic import make_dataset

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = "vlmad-tiny-vit"
EXCLUDED = {
    "vlmad fetch-weights": "downloads pretrained weights (network)",
    "vlmad download": "downloads MVTec AD / VisA (network); tests/test_download.py runs it against a local server",
    "vlmad demo": "wants the pretrained weights (network); tests/test_demo.py runs the demo offline",
    "vlmad serve": "a server that runs until stopped; tests/serve/test_cli.py starts it with the same options",
    # "Running on a cluster": --ray-address auto joins a running multi-node cluster on shared storage; the same
    # options run against a local Ray cluster in tests/bench/test_ray_executor.py, tests/study/test_ray_study.py and
    # tests/cli/test_ray_detect.py
    "vlmad benchmark --dataset mvtec --root /shared/": "needs a running Ray cluster (--ray-address auto)",
    "vlmad study seed-full --root mvtec=/shared/": "needs a running Ray cluster (--ray-address auto)",
    "vlmad detect /shared/": "needs a running Ray cluster (--ray-address auto)",
}
WEIGHT_OPTS = {"--model": 1, "--checkpoint": 1, "--pretrained": 1, "--random-weights": 0}
WITH_WEIGHTS = {"detect", "calibrate", "benchmark", "study", "train", "export"}


def readme_commands(programs: tuple[str, ...] = ("vlmad",)) -> list[str]:
    """`vlmad ...` (or other ``programs``') lines of the bash blocks, in README order (continuations joined,
    trailing comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.split(" ", 1)[0] in programs:
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def test_every_runtime_command_parses_as_written():
    """The `vlmad-runtime` lines (the line-PC half of "Deploy on a line PC") take these arguments."""
    from vlmad_runtime.cli import _parser

    commands = readme_commands(("vlmad-runtime",))
    assert any(c.startswith("vlmad-runtime serve ") for c in commands)
    for command in commands:
        _parser().parse_args(shlex.split(command)[1:])


def run_runtime_serve(command: str, cwd: Path) -> None:
    """`vlmad-runtime serve ...` as written (on a free port): ready, one image scored, then stopped."""
    import httpx

    from vlmad_runtime.serve.client import free_port, wait_until_ready

    args = shlex.split(command)[1:]
    port = free_port()
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
    log = cwd / "runtime-serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlmad_runtime.cli", *args, "--data-dir", str(cwd / "serve-data")],
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, 120, alive=lambda: proc.poll() is None), f"README: {command}\n{log.read_text()}"
        res = httpx.post(url + "/v1/detect", files={"image": ("img.png", (cwd / "img.png").read_bytes())}, timeout=60)
        assert res.status_code == 200 and res.json()["decision"] in ("normal", "anomalous"), res.text
    finally:
        proc.terminate()
        proc.wait(30)


def rewrite(command: str, roots: dict[str, Path], checkpoint: Path) -> list[str]:
    args = shlex.split(command)[1:]
    out: list[str] = []
    skip = 0
    for arg in args:
        if skip:
            skip -= 1
            continue
        if arg in WEIGHT_OPTS and args[0] in WITH_WEIGHTS:
            skip = WEIGHT_OPTS[arg]
            continue
        for prefix, root in roots.items():
            arg = re.sub(rf"(^|=){re.escape(prefix)}$", rf"\g<1>{root}", arg)
        out.append(re.sub(r"epoch_0\d\d", "epoch_001", arg))
    if "--epochs" in out:
        out[out.index("--epochs") + 1] = "1"
    if args[0] in WITH_WEIGHTS:
        out += ["--model", TINY, "--checkpoint", str(checkpoint)]
    return out


def _workspace(tmp: Path) -> dict[str, Path]:
    """The files the README's examples name, generated."""
    small = {"n_train": 4, "n_test_good": 2, "n_test_bad": 2, "size": 48}
    roots = {
        "/data/mvtec_anomaly_detection": make_dataset(tmp / "mvtec", layout="mvtec", categories="bottle", **small),
        "/data/visa": make_dataset(tmp / "visa", layout="visa", categories="candle", **small),
        "/data/my_product": make_dataset(tmp / "product", layout="folder", categories="bottle", **small),
    }
    roots["/data/mvtec"] = roots["/data/mvtec_anomaly_detection"]
    good = sorted((roots["/data/mvtec"] / "bottle" / "train" / "good").glob("*.png"))
    test = sorted((roots["/data/mvtec"] / "bottle" / "test").rglob("*.png"))
    for folder, files in (
        ("parts", test),
        ("good", good[:2]),
        ("good_refs", good[:2]),
        ("good_parts", good),
        ("lots/a/b", test[:2]),
    ):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, tmp / folder / f"{f.parent.name}_{f.name}")
    from PIL import Image

    Image.open(test[0]).save(tmp / "lots" / "a" / "part.webp")
    shutil.copy(test[0], tmp / "img.png")
    (tmp / "batch.txt").write_text("img.png\n")
    return roots


def test_every_readme_command_parses_as_written(tmp_path):
    """Fast check of every README command, excluded ones too: the command exists and takes these options."""
    import typer

    from vlmad.cli import app

    group = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) >= 15
    for command in commands:
        args = shlex.split(command)[1:]
        if args == ["--version"]:
            continue
        sub = group.commands[args[0]]
        rest = args[1:]
        if hasattr(sub, "commands"):  # `vlmad train aprilgan ...`
            sub, rest = sub.commands[rest[0]], rest[1:]
        optional = [i for i, a in enumerate(rest) if a.startswith("[")]  # `[--checkpoint PATH | --fallback...]`
        rest = rest[: optional[0]] if optional else rest
        sub.make_context(args[0], rest)


@pytest.mark.slow
def test_readme_commands_run(tmp_path, weights_file):
    roots = _workspace(tmp_path)
    checkpoint = weights_file(TINY)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ran = []
    for command in readme_commands(("vlmad", "vlmad-runtime")):
        if any(command.startswith(prefix) for prefix in EXCLUDED):
            continue
        if command.startswith("vlmad-runtime serve "):
            run_runtime_serve(command, tmp_path)
            ran.append(command)
            continue
        args = rewrite(command, roots, checkpoint)
        res = subprocess.run(
            [sys.executable, "-m", "vlmad", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900
        )
        assert res.returncode == 0, f"README: {command}\nran: vlmad {shlex.join(args)}\n{res.stdout}\n{res.stderr}"
        ran.append(command)
    assert any(c.startswith("vlmad study") for c in ran) and any(c.startswith("vlmad calibrate") for c in ran)
    assert any(c.startswith("vlmad-runtime serve") for c in ran)
    assert (tmp_path / "runs" / "quick" / "report.html").is_file()
    assert "decision" in (tmp_path / "results" / "scores.csv").read_text().splitlines()[0]
