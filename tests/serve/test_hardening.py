"""Service hardening (issue 15, items 1-5): cross-site requests, Host names, decode slots, what the queue holds,
reference-upload budgets, and the odd inputs and failures that used to answer 500 or 404."""

from __future__ import annotations

import gc
import io
import os
import socket
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from vlmad_runtime.serve.guard import default_allowed_hosts, normalise_origin, split_list
from vlmad_runtime.serve.limits import Limits

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart, httpx) is not installed")

ATTACKER = "http://127.0.0.1:18090"


def _ref_post(client, png: bytes, headers: dict | None = None, name: str = "good"):
    return client.post(
        f"/v1/references/{name}?replace=true", files={"images": ("g.png", png, "image/png")}, headers=headers or {}
    )


# ---------------------------------------------------------------------------------------------- 1. CSRF and Host
@pytest.mark.parametrize("api_key", [None, "k3y"])
def test_cross_origin_browser_posts_are_refused_key_or_no_key(make_app, serve_helpers, api_key):
    png = serve_helpers.png(1)
    key = {"X-API-Key": api_key} if api_key else {}
    with serve_helpers.client(make_app(api_key=api_key)) as c:
        # what fetch(..., {mode: "no-cors", method: "POST", body: formData}) from another page sends
        forged = _ref_post(c, png, {**key, "Origin": ATTACKER, "Sec-Fetch-Site": "same-site"})
        assert forged.status_code == 403, forged.text
        assert forged.json()["error"]["code"] == "cross_origin_refused"
        assert "--allowed-origins" in forged.json()["error"]["hint"]
        no_origin = _ref_post(c, png, {**key, "Sec-Fetch-Site": "cross-site"})
        assert no_origin.status_code == 403
        null_origin = _ref_post(c, png, {**key, "Origin": "null"})
        assert null_origin.status_code == 403
        assert c.get("/v1/references", headers=key).json()["sets"] == []  # nothing was stored
        det = c.post("/v1/detect", files={"image": ("p.png", png, "image/png")}, headers={**key, "Origin": ATTACKER})
        assert det.status_code == 403
        gone = c.delete("/v1/references/good", headers={**key, "Origin": ATTACKER})
        assert gone.status_code == 403
        # the service's own page (same origin) and non-browser clients keep working
        own = _ref_post(c, png, {**key, "Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 201, own.text
        proxied = _ref_post(c, png, {**key, "Origin": "https://127.0.0.1"})  # own page behind a TLS proxy
        assert proxied.status_code == 200, proxied.text
        other_port = _ref_post(c, png, {**key, "Origin": "http://127.0.0.1:8001"})
        assert other_port.status_code == 403
        assert _ref_post(c, png, key, name="cli").status_code == 201


def test_allowed_origins_may_post_and_get_cors_answers(make_app, serve_helpers):
    png = serve_helpers.png(2)
    with serve_helpers.client(make_app(allowed_origins=(ATTACKER,))) as c:
        ok = _ref_post(c, png, {"Origin": ATTACKER, "Sec-Fetch-Site": "same-site"})
        assert ok.status_code == 201, ok.text
        assert ok.headers["access-control-allow-origin"] == ATTACKER
        pre = c.options("/v1/detect", headers={"Origin": ATTACKER, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ATTACKER
        other = _ref_post(c, png, {"Origin": "http://evil.example"})
        assert other.status_code == 403


def test_unknown_host_headers_are_refused_except_on_probes(make_app, serve_helpers):
    png = serve_helpers.png(3)
    with serve_helpers.client(make_app()) as c:
        rebound = {"Host": "attacker.example"}
        for res in (
            c.get("/v1/info", headers=rebound),
            c.get("/v1/references", headers=rebound),
            c.post("/v1/detect", files={"image": ("p.png", png, "image/png")}, headers=rebound),
            c.get("/", headers=rebound),
        ):
            assert res.status_code == 403, res.text
            assert res.json()["error"]["code"] == "unknown_host"
        assert c.get("/healthz", headers=rebound).status_code == 200
        for host in ("localhost:8000", "127.0.0.1", "[::1]:9"):
            assert c.get("/v1/info", headers={"Host": host}).status_code == 200, host
    with serve_helpers.client(make_app(allowed_hosts=("127.0.0.1", "inspect.lan"))) as c:
        assert c.get("/v1/info", headers={"Host": "Inspect.LAN:8000"}).status_code == 200
        assert c.get("/v1/info", headers={"Host": "localhost"}).status_code == 403


def test_guard_defaults_and_parsing():
    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("10.0.0.5")[-1] == "10.0.0.5"
    assert default_allowed_hosts("0.0.0.0") == ("*",)
    assert split_list(["a, b", "c"]) == ("a", "b", "c")
    assert normalise_origin("HTTP://Example.com:3000/") == "http://example.com:3000"
    with pytest.raises(ValueError, match="not an origin"):
        normalise_origin("example.com")


# ---------------------------------------------------------------------------------------------- helpers
def _gradient_png(width: int, height: int) -> bytes:
    """A large image that compresses to a small PNG (decoding still costs every pixel)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@contextmanager
def live_server(app):
    """``app`` behind a real uvicorn on a free loopback port (in a thread); yields the base URL."""
    import uvicorn

    from vlmad_runtime.serve.client import free_port, wait_until_ready

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(url, 120, alive=thread.is_alive), "server did not start"
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- 2. decode slots
def test_decode_slots_stay_taken_until_timed_out_decodes_end(make_app):
    import httpx

    png = _gradient_png(2400, 2400)
    app = make_app(limits=Limits(max_concurrent_decodes=2, request_timeout_s=0.05))
    service = app.state.service
    with live_server(app) as url:

        def post(_):
            return httpx.post(
                url + "/v1/detect", content=png, headers={"Content-Type": "image/png"}, timeout=120
            ).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(post, range(12)))
        assert set(codes) == {504}, codes  # every request gave up waiting ...
        _wait_for(lambda: service.decodes_running == 0)  # ... while their decodes went on
        metrics = httpx.get(url + "/metrics").text
    assert 1 <= service.decodes_peak <= 2, service.decodes_peak
    assert "vlmad_decodes_running 0" in metrics


# ---------------------------------------------------------------------------------------------- 3. queue contents
@pytest.mark.parametrize("heatmap", ["none", "overlay"])
def test_full_resolution_image_is_not_alive_while_the_model_runs(make_app, make_detector, serve_helpers, heatmap):
    size = (1500, 1100)
    det = make_detector()
    seen: list[list[tuple[int, int]]] = []
    real_predict = det.predict

    def predict(batch):  # instrumentation: which decoded images exist while the request is in the model
        gc.collect()
        with warnings.catch_warnings():  # scanning every object touches deprecated module attributes
            warnings.simplefilter("ignore")
            seen.append([o.size for o in gc.get_objects() if isinstance(o, Image.Image) and max(o.size) >= 1000])
        return real_predict(batch)

    det.predict = predict
    with serve_helpers.client(make_app(detector=det)) as c:
        res = c.post(
            f"/v1/detect?heatmap={heatmap}", content=_gradient_png(*size), headers={"Content-Type": "image/png"}
        )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["image"]["width"] == 1500 and body["image"]["height"] == 1100
    assert seen and all(size not in alive for alive in seen), seen
    if heatmap == "overlay":
        assert body["heatmap"]["overlay_size"] == [1024, 751]
        assert any((1024, 751) in alive for alive in seen)  # only the downscaled copy waits for the overlay


# ---------------------------------------------------------------------------------------------- 4. reference uploads
def test_reference_uploads_decode_one_at_a_time_within_a_pixel_budget(make_app, serve_helpers, monkeypatch):
    import vlmad_runtime.serve.imaging as imaging

    limits = Limits(max_reference_pixels=3_000_000, reference_max_side=256)
    real_decode = imaging.decode_image
    decoded: list[weakref.ref] = []
    alive_at_decode: list[int] = []

    def counting_decode(data, lim, label="image"):
        gc.collect()
        alive_at_decode.append(sum(1 for r in decoded if r() is not None and max(r().size) > 256))
        image, fmt = real_decode(data, lim, label)
        decoded.append(weakref.ref(image))
        return image, fmt

    monkeypatch.setattr(imaging, "decode_image", counting_decode)
    big = _gradient_png(1000, 800)
    with serve_helpers.client(make_app(limits=limits)) as c:
        files = [("images", (f"g{i}.png", big, "image/png")) for i in range(3)]
        ok = c.post("/v1/references/good", files=files)
        assert ok.status_code == 201, ok.text
        assert [(im["width"], im["height"]) for im in ok.json()["images"]] == [(256, 205)] * 3
        assert alive_at_decode == [0, 0, 0]  # no earlier full-size image alive when the next one decodes
        files = [("images", (f"g{i}.png", big, "image/png")) for i in range(4)]
        res = c.post("/v1/references/many", files=files)
        assert res.status_code == 413, res.text
        err = res.json()["error"]
        assert err["code"] == "reference_set_too_large" and "images[3]" in err["message"]
        assert "3000000" in err["message"]
        assert len(alive_at_decode) == 6  # refused from the 4th header, before decoding it
        assert [s["name"] for s in c.get("/v1/references").json()["sets"]] == ["good"]


# ---------------------------------------------------------------------------------------------- 5. odd inputs
def test_deeply_nested_json_is_a_400(make_app, serve_helpers):
    nested = "[" * 100_000 + "]" * 100_000
    with serve_helpers.client(make_app()) as c:
        for path in ("/v1/detect", "/v1/references/good"):
            res = c.post(path, content=nested, headers={"Content-Type": "application/json"})
            assert res.status_code == 400, res.text
            assert res.json()["error"]["code"] == "invalid_json" and "nested" in res.json()["error"]["message"]


def test_request_bodies_share_one_budget(make_app):
    import httpx

    limits = Limits(
        max_upload_bytes=1024 * 1024,
        max_reference_request_bytes=2 * 1024 * 1024,
        max_body_bytes_in_flight=2 * 1024 * 1024,
    )
    app = make_app(limits=limits)
    service = app.state.service
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        try:  # a client that declares 1.3 MB and sends the body slowly holds that much of the budget
            slow.sendall(
                b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1300000\r\n\r\n" + b"\0" * 1000
            )
            _wait_for(lambda: service.bodies.used >= 1_300_000)
            second = httpx.post(
                url + "/v1/detect", content=b"\0" * 1_000_000, headers={"Content-Type": "image/png"}, timeout=30
            )
            assert second.status_code == 503, second.text
            assert second.json()["error"]["code"] == "busy" and second.headers["retry-after"] == "1"
        finally:
            slow.close()
        _wait_for(lambda: service.bodies.used == 0)
        third = httpx.post(
            url + "/v1/detect", content=b"\0" * 1_000_000, headers={"Content-Type": "image/png"}, timeout=30
        )
        assert third.status_code == 400 and third.json()["error"]["code"] == "invalid_image"


def test_upload_racing_a_delete_still_reports_its_success(make_app, serve_helpers, monkeypatch):
    app = make_app()
    store = app.state.service.store
    real_put = store.put

    def put_then_deleted(name, *args, **kwargs):  # a DELETE lands right after this upload's write
        out = real_put(name, *args, **kwargs)
        store.delete(name)
        return out

    monkeypatch.setattr(store, "put", put_then_deleted)
    with serve_helpers.client(app) as c:
        res = _ref_post(c, serve_helpers.png(4), name="racy")
        assert res.status_code == 201, res.text
        assert res.json()["name"] == "racy" and res.json()["count"] == 1 and res.json()["version"]
        assert c.get("/v1/references/racy").status_code == 404  # and the DELETE won, as it came later


def test_disk_full_on_upload_is_507_and_keeps_the_old_set(make_app, serve_helpers, monkeypatch, tmp_path):
    import vlmad_runtime.serve.references as references

    with serve_helpers.client(make_app()) as c:
        first = _ref_post(c, serve_helpers.png(5))
        assert first.status_code == 201
        # every write of the new set goes to /dev/full: the kernel answers ENOSPC
        monkeypatch.setattr(
            references.tempfile,
            "mkstemp",
            lambda **kw: (os.open("/dev/full", os.O_WRONLY), str(tmp_path / ".tmp-full.zip")),
        )
        res = _ref_post(c, serve_helpers.png(6))
        assert res.status_code == 507, res.text
        err = res.json()["error"]
        assert err["code"] == "insufficient_storage" and "free disk space" in err["hint"]
        assert c.get("/v1/references/good").json()["version"] == first.json()["version"]


def test_mpo_jpegs_are_accepted_like_the_cli_loads_them(make_app, serve_helpers, tmp_path):
    from vlmad_runtime.images import load_image

    a = Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    a.save(buf, "MPO", save_all=True, append_images=[a.rotate(90)])
    (tmp_path / "phone.jpg").write_bytes(buf.getvalue())
    assert load_image(tmp_path / "phone.jpg").size == (80, 60)
    with serve_helpers.client(make_app()) as c:
        res = c.post("/v1/detect", files={"image": ("phone.jpg", buf.getvalue(), "image/jpeg")})
        assert res.status_code == 200, res.text
        assert res.json()["image"]["format"] == "MPO" and res.json()["image"]["width"] == 80
        ref = c.post("/v1/references/phone", files={"images": ("phone.jpg", buf.getvalue(), "image/jpeg")})
        assert ref.status_code == 201, ref.text


def test_no_docs_page_that_needs_a_cdn(make_app, serve_helpers):
    with serve_helpers.client(make_app()) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
        page = c.get("/").text + c.get("/static/app.js").text
    assert "cdn" not in page.lower() and 'href="/docs"' not in page
