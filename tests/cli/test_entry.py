"""The `vlmad` entry point: --version, light --help, flags shown as flags, honest exits (Ctrl-C, nothing scored),
progress lines without a terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from vlmad_runtime.version import __version__


def vlmad(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "vlmad", *map(str, args)], capture_output=True, text=True, env=env, timeout=600, **kw
    )


def test_version():
    res = vlmad("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"vlmad {__version__}"


def test_help_imports_no_heavy_module_and_shows_flags_as_flags():
    code = (
        "import sys; from vlmad.cli import run\n"
        "for cmd in ([], ['detect'], ['benchmark'], ['study'], ['serve'], ['train', 'aprilgan'], ['models']):\n"
        "    assert run([*cmd, '--help']) == 0, cmd\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'numpy', 'PIL') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200")
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "<bool>" not in res.stdout and "--recursive" in res.stdout


def test_data_cmd_defaults_match_the_generator():
    from vlmad.cli import data_cmd
    from vlmad.data import synthetic

    assert data_cmd.LAYOUTS == synthetic.LAYOUTS and data_cmd.DEFAULT_CATEGORIES == synthetic.DEFAULT_CATEGORIES


def test_usage_errors_exit_2_with_the_message():
    res = vlmad("detect", "x.png", "--bogus")
    assert res.returncode == 2 and "No such option: --bogus" in res.stderr


def _images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (i % 255, 40, 90)).save(folder / f"p{i:05d}.png")


def test_detect_nothing_scored_exits_non_zero_and_progress_lines_without_tty(tmp_path):
    _images(tmp_path / "lot" / "sub", 3)
    tiny = ("--model", "vlmad-tiny-vit", "--random-weights", "-c", "bottle")
    res = vlmad("detect", tmp_path / "lot", *tiny, "--out", tmp_path / "o1")
    assert res.returncode == 2 and "--recursive" in res.stderr
    res = vlmad("detect", tmp_path / "lot", "--recursive", *tiny, "--out", tmp_path / "o2", "--batch-size", "1")
    assert res.returncode == 0, res.stderr
    assert "detect: 1/3" in res.stderr and "detect: 3/3" in res.stderr and "scored 3 image(s)" in res.stderr
    (tmp_path / "broken.png").write_bytes(b"not a png")
    res = vlmad("detect", tmp_path / "broken.png", *tiny, "--out", tmp_path / "o3")
    assert res.returncode == 2 and "no image could be scored" in res.stderr


def test_ctrl_c_says_what_was_kept(tmp_path):
    # enough images that the run cannot finish between the first rows and the signal, even when the
    # test process itself is starved of CPU (the tiny model scores ~200 images/s)
    _images(tmp_path / "lot", 5000)
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vlmad",
            "detect",
            str(tmp_path / "lot"),
            "-c",
            "bottle",
            "--model",
            "vlmad-tiny-vit",
            "--random-weights",
            "--batch-size",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell that starts the suite in the background hands SIGINT down as ignored: give it back to the child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        scores = out / "scores.csv"
        if scores.is_file() and len(scores.read_text().splitlines()) > 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "scores.csv" in err and "scored so far are kept" in err
