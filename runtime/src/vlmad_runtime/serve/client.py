"""Client-side helpers for a running ``vlmad serve``: start-up scripts, load tests and our own tests share them.

Only ``httpx`` (part of the ``serve`` extra) is needed; nothing here imports FastAPI.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (the OS picks it), for a server started just after."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True, poll_s: float = 0.2) -> bool:
    """Polls ``GET {url}/readyz`` until it answers 200 (model loaded, worker running).

    Returns False, instead of waiting out the timeout, as soon as ``alive()`` says the server process or thread
    has died; False as well when ``timeout`` seconds pass. The caller decides how to report it (it has the log).
    """
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
