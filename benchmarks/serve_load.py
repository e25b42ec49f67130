"""Load test of `vlmad serve`: concurrent clients against a real server process on a loopback port.

Starts ``vlmad serve`` (tiny model, random weights: this measures the service, not the model) as a subprocess on a
free 127.0.0.1 port with a temporary data dir, creates a reference set, then runs two phases of ``--clients``
concurrent clients x ``--requests`` requests each (half zero-shot, half few-shot):

1. clean: every request valid;
2. mixed: ``--malformed`` (default 10%) of the requests are malformed (corrupt bytes, truncated PNG, decompression
   bomb header, wrong content type, missing field, bad base64, unknown or invalid reference set name).

Every request is accounted for: a valid request must get 200, a malformed one a 4xx; anything else (5xx, transport
error, timeout) is an error, and a request that got no response at all is "lost". Prints p50/p99 latency of the
valid requests, throughput, and the mean dynamic batch size (from the server's /metrics). Exit status 1 when there
is any error or lost response. Bounded: at most clients x requests per phase and ``--max-seconds`` per phase
(requests not started within the budget are reported as "not sent", never as lost).

    python benchmarks/serve_load.py                      # 32 clients x 200 requests, 10% malformed in phase 2
    python benchmarks/serve_load.py --clients 8 --requests 20 --max-seconds 60     # quick
    python benchmarks/serve_load.py --smoke      # 2 clients x 3 requests: checks the script runs (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _env import add_smoke_flag, print_environment
from PIL import Image

LAUNCH = "import vlmad.cli.serve_cmd; from vlmad.cli import main; main()"
HOST = "127.0.0.1"


def png(seed: int, size: tuple[int, int]) -> bytes:
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class Req:
    kind: str  # "valid" or the malformation
    query: str
    files: dict | None = None
    content: bytes | None = None
    json: object | None = None
    headers: dict = field(default_factory=dict)


def make_requests(n: int, malformed: float, seed: int, images: list[bytes]) -> list[Req]:
    rng = np.random.default_rng(seed)
    good = images[0]
    bad_kinds = [
        "garbage",
        "truncated",
        "bomb",
        "text_plain",
        "missing_field",
        "bad_base64",
        "unknown_set",
        "invalid_set_name",
        "gif_disguised",
        "empty",
    ]
    out = []
    for i in range(n):
        img = images[i % len(images)]
        ref = "?references=good" if rng.random() < 0.5 else ""
        if rng.random() >= malformed:
            if rng.random() < 0.8:
                out.append(Req("valid", ref, files={"image": (f"{i}.png", img, "image/png")}))
            else:
                out.append(Req("valid", ref, json={"image_b64": base64.b64encode(img).decode()}))
            continue
        kind = bad_kinds[int(rng.integers(len(bad_kinds)))]
        if kind == "garbage":
            r = Req(kind, ref, files={"image": ("x.png", rng.bytes(2000), "image/png")})
        elif kind == "truncated":
            r = Req(kind, ref, files={"image": ("x.png", good[: len(good) // 2], "image/png")})
        elif kind == "bomb":
            r = Req(kind, ref, files={"image": ("x.png", bomb_header(60_000, 60_000), "image/png")})
        elif kind == "text_plain":
            r = Req(kind, ref, content=b"hello", headers={"Content-Type": "text/plain"})
        elif kind == "missing_field":
            r = Req(kind, ref, files={"picture": ("x.png", good, "image/png")})
        elif kind == "bad_base64":
            r = Req(kind, ref, json={"image_b64": "!!!" + "A" * 50})
        elif kind == "unknown_set":
            r = Req(kind, "?references=no-such-set", files={"image": ("x.png", good, "image/png")})
        elif kind == "invalid_set_name":
            r = Req(kind, "?references=../../etc/passwd", files={"image": ("x.png", good, "image/png")})
        elif kind == "gif_disguised":
            buf = io.BytesIO()
            Image.new("RGB", (20, 20)).save(buf, "GIF")
            r = Req(kind, ref, files={"image": ("x.png", buf.getvalue(), "image/png")})
        else:
            r = Req(kind, ref, files={"image": ("x.png", b"", "image/png")})
        out.append(r)
    return out


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: transport error / timeout
    latency: float
    error: str = ""


async def run_phase(
    url: str,
    clients: int,
    per_client: int,
    malformed: float,
    seed: int,
    images: list[bytes],
    max_seconds: float,
    timeout: float,
) -> tuple[list[Outcome], int, float]:
    import httpx

    plans = [make_requests(per_client, malformed, seed * 1000 + c, images) for c in range(clients)]
    outcomes: list[Outcome] = []
    not_sent = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def one_client(plan: list[Req]) -> None:
            nonlocal not_sent
            for k, req in enumerate(plan):
                if time.perf_counter() > deadline:
                    not_sent += len(plan) - k
                    return
                t0 = time.perf_counter()
                try:
                    res = await client.post(
                        "/v1/detect" + req.query,
                        files=req.files,
                        content=req.content,
                        json=req.json,
                        headers=req.headers,
                    )
                    await res.aread()
                    outcomes.append(
                        Outcome(
                            req.kind,
                            res.status_code,
                            time.perf_counter() - t0,
                            "" if res.status_code < 500 else res.text[:200],
                        )
                    )
                except Exception as err:  # transport error or client timeout: counted, never hidden
                    outcomes.append(Outcome(req.kind, None, time.perf_counter() - t0, f"{type(err).__name__}: {err}"))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(p) for p in plans))
        elapsed = time.perf_counter() - t0
    return outcomes, not_sent, elapsed


def scrape_batches(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    count = re.search(r"^vlmad_batch_size_count (\S+)$", text, re.M)
    total = re.search(r"^vlmad_batch_size_sum (\S+)$", text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


def report(
    name: str, outcomes: list[Outcome], not_sent: int, planned: int, elapsed: float, batches: tuple[float, float]
) -> dict:
    valid = [o for o in outcomes if o.kind == "valid"]
    bad = [o for o in outcomes if o.kind != "valid"]
    valid_ok = [o for o in valid if o.status == 200]
    errors = [o for o in outcomes if o.status is None or o.status >= 500]
    wrong = [o for o in valid if o.status != 200 and o.status is not None and o.status < 500] + [
        o for o in bad if o.status is not None and not 400 <= o.status < 500
    ]
    lost = planned - not_sent - len(outcomes)
    lat = np.array([o.latency for o in valid_ok]) * 1000 if valid_ok else np.array([float("nan")])
    n_batches, n_images = batches
    print(
        f"\n== {name}: {len(outcomes)} responses / {planned} planned in {elapsed:.1f} s "
        f"({len(outcomes) / elapsed:.1f} req/s, {len(valid_ok) / elapsed:.1f} images/s)"
    )
    print(f"   valid requests   : {len(valid)}  -> 200: {len(valid_ok)}")
    if bad:
        statuses = Counter(o.status for o in bad)
        kinds = Counter(o.kind for o in bad)
        print(f"   malformed        : {len(bad)}  -> statuses {dict(sorted(statuses.items(), key=str))}")
        print(f"                      kinds {dict(sorted(kinds.items()))}")
    print(f"   non-4xx errors   : {len(errors)}   (5xx, transport errors, timeouts)")
    print(f"   wrong status     : {len(wrong)}   (valid not 200, or malformed not 4xx)")
    print(f"   lost responses   : {lost}   not sent (time budget): {not_sent}")
    print(
        f"   latency (valid)  : p50 {np.percentile(lat, 50):.1f} ms  p90 {np.percentile(lat, 90):.1f} ms  "
        f"p99 {np.percentile(lat, 99):.1f} ms  max {lat.max():.1f} ms"
    )
    mean_batch = n_images / n_batches if n_batches else float("nan")
    print(f"   model batches    : {int(n_batches)} forwards, {int(n_images)} images, mean batch size {mean_batch:.2f}")
    for o in errors[:5]:
        print(f"   e.g. error: {o.kind} status={o.status} {o.error}")
    for o in wrong[:5]:
        print(f"   e.g. wrong: {o.kind} status={o.status}")
    return {"errors": len(errors), "wrong": len(wrong), "lost": lost}


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=200, help="requests per client and phase")
    ap.add_argument("--malformed", type=float, default=0.10, help="fraction of malformed requests in phase 2")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="time budget per phase")
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    ap.add_argument("--model", default="vlmad-tiny-vit")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--request-timeout", type=float, default=60.0, help="server-side per-request timeout (s)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.requests, args.max_seconds, args.max_batch_size, args.malformed = 2, 3, 120.0, 2, 0.5
    print_environment("serve_load: vlmad serve under concurrent load", args.smoke)
    if args.clients < 1 or args.requests < 1 or not 0 <= args.malformed <= 1:
        ap.error("--clients and --requests must be >= 1, --malformed in [0, 1]")
    try:
        import httpx
    except ImportError:
        print("needs httpx (pip install 'vlmad[serve]')", file=sys.stderr)
        return 2
    from vlmad_runtime.serve.client import free_port, wait_until_ready

    images = [png(i, size) for i, size in enumerate([(64, 64), (120, 90), (200, 150), (96, 128)])]
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="vlmad-serve-load-") as tmp:
        cmd = [
            sys.executable,
            "-c",
            LAUNCH,
            "serve",
            "--class-name",
            "bottle",
            "--model",
            args.model,
            "--random-weights",
            "--host",
            HOST,
            "--port",
            str(port),
            "--data-dir",
            str(Path(tmp) / "data"),
            "--max-batch-size",
            str(args.max_batch_size),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--request-timeout",
            str(args.request_timeout),
            "--max-queue",
            str(max(512, 2 * args.clients)),
            "--log-level",
            "warning",
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLMAD_CACHE_DIR=str(Path(tmp) / "cache"))
        env.pop("VLMAD_API_KEY", None)
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.perf_counter()
            if not wait_until_ready(url, 180, alive=lambda: server.poll() is None):
                print("server did not become ready:\n" + log_path.read_text()[-3000:], file=sys.stderr)
                return 1
            print(
                f"vlmad serve ({args.model}, random weights) ready on {url} after {time.perf_counter() - t0:.1f} s; "
                f"max batch {args.max_batch_size}, max wait {args.max_wait_ms} ms; "
                f"{args.clients} clients x {args.requests} requests per phase; cpu count {os.cpu_count()}"
            )
            res = httpx.post(
                url + "/v1/references/good",
                timeout=60,
                files=[("images", (f"g{i}.png", png(100 + i, (64, 64)), "image/png")) for i in range(4)],
            )
            assert res.status_code == 201, res.text
            # warm-up (first-call allocations), not counted
            for q in ("", "?references=good"):
                httpx.post(url + "/v1/detect" + q, files={"image": ("w.png", images[0], "image/png")}, timeout=60)

            totals = {"errors": 0, "wrong": 0, "lost": 0}
            planned = args.clients * args.requests
            for name, frac, seed in (
                ("phase 1: all valid", 0.0, 1),
                (f"phase 2: {args.malformed:.0%} malformed", args.malformed, 2),
            ):
                before = scrape_batches(url)
                outcomes, not_sent, elapsed = asyncio.run(
                    run_phase(url, args.clients, args.requests, frac, seed, images, args.max_seconds, args.timeout)
                )
                after = scrape_batches(url)
                r = report(name, outcomes, not_sent, planned, elapsed, (after[0] - before[0], after[1] - before[1]))
                for k in totals:
                    totals[k] += r[k]
            alive = server.poll() is None and httpx.get(url + "/healthz", timeout=5).status_code == 200
            print(f"\nserver alive after both phases: {alive}")
            print(
                f"TOTAL: non-4xx errors {totals['errors']}, wrong statuses {totals['wrong']}, "
                f"lost responses {totals['lost']}"
            )
            ok = alive and not any(totals.values())
            print("RESULT:", "PASS" if ok else "FAIL")
            return 0 if ok else 1
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            server_log = log_path.read_text() if log_path.exists() else ""
            if "Traceback" in server_log:
                print("server log contains a traceback:\n" + server_log[-3000:], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
