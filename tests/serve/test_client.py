"""vlmad_runtime.serve.client: the readiness poll gives up at once when the server died, and at the deadline else."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

from vlmad_runtime.serve.client import free_port, wait_until_ready  # noqa: E402


def test_dead_server_is_reported_without_waiting_out_the_timeout():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    assert wait_until_ready(url, timeout=60, alive=lambda: False) is False
    assert time.monotonic() - t0 < 30


def test_gives_up_at_the_deadline_when_nothing_answers():
    url = f"http://127.0.0.1:{free_port()}"
    assert wait_until_ready(url, timeout=0.3, poll_s=0.05) is False


def test_free_port_can_be_bound():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
