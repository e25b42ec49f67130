"""The hub probe and `vlmad fetch-weights`, against a real HTTP server on 127.0.0.1 (no internet needed).

fetch-weights runs as a user runs it (a subprocess of the CLI) with ``HF_ENDPOINT`` pointing at the local server,
so the probe, the download, the load and the safetensors export are the real code paths. The only test-side step
is registering a pretrained tag for the tiny architecture in open_clip's table (its real tags are 100s of MB);
the tag's URL is the local server.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vlmad.backbones.loading import hub_address, hub_reachable, resolve_model
from vlmad.testing import discriminative_state_dict, save_state_dict

ARCH = "vlmad-tiny-vit"
TAG = "localtest"


@contextmanager
def http_server(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """A static file server on 127.0.0.1 (random free port): (base URL, request lines seen)."""
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, fmt: str, *args) -> None:  # record instead of printing
            seen.append(self.requestline)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def listener() -> Iterator[tuple[socket.socket, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        sock.settimeout(0.5)
        yield sock, sock.getsockname()[1]


def _accepted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


# ---------------------------------------------------------------------------------------------- the probe
def test_probe_connects_to_the_configured_endpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with listener() as (sock, port):
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_address() == ("127.0.0.1", port)
        assert hub_reachable(timeout=2.0) is True
        assert _accepted(sock)  # it really opened a TCP connection there


def test_probe_reports_a_closed_port_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with listener() as (_, port):
        pass  # closed again: nothing listens on the port now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert hub_reachable(timeout=2.0) is False
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_offline_flag_answers_without_touching_the_network(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with listener() as (sock, port):
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0) is False
        assert not _accepted(sock)


def test_default_endpoint_is_the_hub_over_https(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub_address() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org/")
    assert hub_address() == ("hf-mirror.example.org", 443)


# ---------------------------------------------------------------------------------------------- fetch-weights
DRIVER = """
import sys
import open_clip.pretrained as pretrained
pretrained._PRETRAINED.setdefault({arch!r}, {{}})[{tag!r}] = {{"url": sys.argv[1], "hf_hub": "", "quick_gelu": False}}
from vlmad.cli import main
sys.argv = ["vlmad", "fetch-weights", "--model", {arch!r}, "--pretrained", {tag!r}, "--out", sys.argv[2]]
main()
"""


def _fetch_weights(tmp_path: Path, url: str, endpoint: str, out: Path) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(arch=ARCH, tag=TAG))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=endpoint,
        HOME=str(tmp_path / "home"),
        VLMAD_CACHE_DIR=str(tmp_path / "cache"),
    )
    return subprocess.run(
        [sys.executable, str(driver), url, str(out)], capture_output=True, text=True, env=env, timeout=300
    )


def test_fetch_weights_downloads_and_saves_a_loadable_checkpoint(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    served = tmp_path / "served"
    served.mkdir()
    sd = discriminative_state_dict(ARCH, seed=4)
    save_state_dict(sd, served / "tiny.safetensors")
    out = tmp_path / "out" / "tiny-local.safetensors"
    with http_server(served) as (base, seen):
        res = _fetch_weights(tmp_path, f"{base}/tiny.safetensors", base, out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert any(line.startswith("GET /tiny.safetensors") for line in seen), seen
    assert f"--checkpoint{out}" in "".join((res.stdout + res.stderr).split())  # the console may wrap lines
    saved = load_file(str(out))
    assert set(saved) == {k for k in sd if k != "attn_mask"}
    for k, v in saved.items():
        assert torch.equal(v, sd[k].float()), k
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata() == {"arch": ARCH, "pretrained": TAG}
    model, source = resolve_model(ARCH, checkpoint=out)  # what the user does next, offline
    assert source.kind == "checkpoint" and torch.equal(model.visual.proj, sd["visual.proj"].float())


def test_fetch_weights_failed_download_is_a_message_naming_the_cause(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    out = tmp_path / "never.safetensors"
    with http_server(served) as (base, seen):
        res = _fetch_weights(tmp_path, f"{base}/missing.safetensors", base, out)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "the hub is reachable but the download failed" in res.stderr and "404" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    assert any(line.startswith("GET /missing.safetensors") for line in seen), seen
