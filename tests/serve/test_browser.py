"""The web page in headless Chromium (Playwright): load it, upload an image, see score, decision and heatmap.

Needs Debian's chromium (``apt-get install -y chromium``; another binary via ``VLMAD_CHROMIUM``) and the
``playwright`` Python package (``pip install playwright``; no ``playwright install``: the system chromium is used).
Skips, saying which is missing, when either is absent, unless ``VLMAD_REQUIRE_BROWSER=1`` (then it fails).
The screenshot is written to the test's tmp dir and, when ``VLMAD_TEST_ARTIFACTS`` is set, copied there.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.serve.client import free_port, wait_until_ready

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart, httpx) is not installed")

CHROMIUM = os.environ.get("VLMAD_CHROMIUM", "/usr/bin/chromium")


def require_browser() -> str:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright)")
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which(CHROMIUM)
    if not exe:
        missing.append(f"a chromium binary at {CHROMIUM} (apt-get install -y chromium, or set VLMAD_CHROMIUM)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("VLMAD_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (VLMAD_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return str(exe)


def part_image(defect: bool, size: int = 160) -> bytes:
    """A grey 'bottle' seen from above on a dark background, optionally with a bright scratch."""
    from vlmad.data.synthetic import normal_image, paste_anomaly

    arr = normal_image("bottle", size, seed=3, index=1)
    if defect:
        arr, _ = paste_anomaly(arr, np.random.default_rng(5), kind="scratch")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def browser_exe() -> str:
    return require_browser()


@pytest.fixture
def live_server(browser_exe, make_app, make_detector):
    import uvicorn

    app = make_app(detector=make_detector(random=True), threshold=0.5)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    if not wait_until_ready(url, 60, alive=thread.is_alive, poll_s=0.1):
        raise AssertionError("test server did not become ready")
    yield url, app
    server.should_exit = True
    thread.join(15)


def test_page_upload_shows_score_decision_and_heatmap(browser_exe, live_server, tmp_path):
    exe = browser_exe
    from playwright.sync_api import expect, sync_playwright

    url, _ = live_server
    import httpx

    good = [part_image(False, 160)]
    assert (
        httpx.post(
            url + "/v1/references/bottle-good", files=[("images", ("good.png", good[0], "image/png"))], timeout=30
        ).status_code
        == 201
    )
    images = {}
    for name, defect in (("normal.png", False), ("scratched.png", True)):
        images[name] = tmp_path / name
        images[name].write_bytes(part_image(defect))

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on(
                "request",
                lambda r: (
                    errors.append(f"external request {r.url}")
                    if not r.url.startswith(url) and not r.url.startswith(("data:", "blob:"))
                    else None
                ),
            )
            page.goto(url + "/")
            expect(page.locator("#status")).to_contain_text("ready", timeout=20_000)
            banner = page.locator("#random-banner")
            expect(banner).to_be_visible()
            expect(banner).to_contain_text(RANDOM_WEIGHTS_STAMP)
            expect(page.locator("#model-info")).to_contain_text("vlmad-tiny-vit")
            expect(page.locator("#threshold-info")).to_contain_text("threshold 0.5")

            # zero-shot upload
            page.set_input_files("#file", str(images["normal.png"]))
            expect(page.locator("#score")).to_have_text(re.compile(r"^\d+\.\d{4}$"), timeout=20_000)
            expect(page.locator("#decision")).to_have_text(re.compile(r"^(anomalous|normal)$"))
            page.wait_for_function("document.getElementById('heat').naturalWidth > 0", timeout=10_000)
            assert page.eval_on_selector("#heat", "e => e.naturalWidth") == 64  # the model-resolution map
            assert page.eval_on_selector("#img-original", "e => e.naturalWidth") == 160
            expect(page.locator("#result-warning")).to_contain_text(RANDOM_WEIGHTS_STAMP)
            expect(page.locator("#result-meta")).to_contain_text("zero-shot")

            # few-shot with the reference set, and the opacity slider
            page.select_option("#refset", "bottle-good")
            page.set_input_files("#file", str(images["scratched.png"]))
            expect(page.locator("#result-meta")).to_contain_text('references "bottle-good" (1-shot)', timeout=20_000)
            expect(page.locator("#history li")).to_have_count(2)
            page.locator("#opacity").fill("0.8")
            assert page.eval_on_selector("#heat", "e => e.style.opacity") == "0.8"
            expect(page.locator("#opacity-value")).to_have_text("0.80")

            # clicking an older history entry shows it again
            page.locator("#history li").nth(1).click()
            expect(page.locator("#result-meta")).to_contain_text("normal.png")
            page.locator("#history li").nth(0).click()
            expect(page.locator("#result-meta")).to_contain_text("scratched.png")

            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)

            # a non-image upload shows the server's error message, and the page keeps working
            bad = tmp_path / "notes.png"
            bad.write_bytes(b"these are notes, not an image")
            page.set_input_files("#file", str(bad))
            expect(page.locator("#status")).to_contain_text("not a recognisable image", timeout=20_000)
            expect(page.locator("#history li")).to_have_count(2)
            page.set_input_files("#file", str(images["normal.png"]))
            expect(page.locator("#history li")).to_have_count(3, timeout=20_000)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    artefacts = os.environ.get("VLMAD_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)
    print(f"screenshot: {shot}")
    # the only console errors allowed are the 400 of the deliberate bad upload
    unexpected = [e for e in errors if "400" not in e]
    assert not unexpected, unexpected


ATTACK_PAGE = """<!doctype html><html><body><script>
const png = Uint8Array.from(atob("{png}"), c => c.charCodeAt(0));
const form = new FormData();
form.append("images", new Blob([png], {{type: "image/png"}}), "poison.png");
window.attack = fetch("{target}/v1/references/good?replace=true", {{method: "POST", mode: "no-cors", body: form}})
  .then(() => "sent", e => "failed: " + e);
</script></body></html>"""


@pytest.fixture
def attacker_site(tmp_path):
    """Another origin on loopback (its own port) serving one page; yields (url, write_page)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", lambda html: (tmp_path / "index.html").write_text(html)
    httpd.shutdown()
    thread.join(10)


def test_a_page_of_another_origin_cannot_poison_references_or_rebind_dns(browser_exe, live_server, attacker_site):
    """Issue 15 item 1 as it was found: a no-cors multipart POST from another origin replaced the reference set,
    and a rebound host name reached the API. Both must be refused by the server (403), key or no key."""
    import base64

    import httpx
    from playwright.sync_api import sync_playwright

    url, _ = live_server
    site, write_page = attacker_site
    write_page(ATTACK_PAGE.format(png=base64.b64encode(part_image(False, 64)).decode(), target=url))
    port = url.rsplit(":", 1)[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_exe,
            args=["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP attacker.example 127.0.0.1"],
        )
        try:
            page = browser.new_page()
            page.goto(site + "/")
            assert page.evaluate("window.attack") == "sent"  # the browser sent it (opaque answer)
            rebound = page.goto(f"http://attacker.example:{port}/v1/info")
            assert rebound.status == 403 and "unknown_host" in rebound.text()
        finally:
            browser.close()
    assert httpx.get(url + "/v1/references").json()["sets"] == []  # nothing was stored
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'vlmad_errors_total\{code="cross_origin_refused"\} 1', metrics), metrics


def test_page_draws_colour_bar_contour_and_not_calibrated_note(browser_exe, make_app, make_detector, tmp_path):
    """A deploy file calibrated 1-shot on one reference set: with that set the page shows a decision, the colour
    bar with the pixel threshold and the predicted contour; zero-shot it says the threshold is not calibrated."""
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from vlmad.fingerprint import detector_fingerprint, image_digest, reference_fingerprint
    from vlmad.study.calibration import pixel_calibration
    from vlmad_runtime.deploy import validate_deploy

    det = make_detector(random=True)
    good = Image.open(io.BytesIO(part_image(False))).convert("RGB")
    det.setup("bottle")
    det.fit([good])
    _, maps = det.predict([good]).numpy()
    pixel = pixel_calibration([maps[0]], 0.01)
    info = det.info().as_dict()
    det.reset_references()
    dep = validate_deploy(
        {
            "format": 2,
            "threshold": 0.5,
            "method": info["method"],
            "class_name": "bottle",
            "expected_false_alarm_rate": 0.5,
            "calibration": {"mode": "normal-quantile", "n_images": 1},
            "fingerprint": detector_fingerprint(info, "bottle", reference_fingerprint([image_digest(good)])),
            "pixel": pixel.as_dict(),
            "detector": info,
            "created": "2026-01-01",
            "vlmad_version": "0.2.0",
        }
    )
    app = make_app(detector=det, deployment=dep, threshold=dep.threshold)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert wait_until_ready(url, 60, alive=thread.is_alive, poll_s=0.1)
    import httpx

    files = [("images", ("g.png", part_image(False), "image/png"))]
    assert httpx.post(url + "/v1/references/bottle-good", files=files, timeout=30).status_code == 201
    (tmp_path / "scratched.png").write_bytes(part_image(True))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(url + "/")
            expect(page.locator("#status")).to_contain_text("ready", timeout=20_000)
            page.set_input_files("#file", str(tmp_path / "scratched.png"))  # zero-shot: not calibrated
            expect(page.locator("#decision-note")).to_contain_text("threshold not calibrated", timeout=20_000)
            expect(page.locator("#decision")).to_have_text("no decision")
            page.select_option("#refset", "bottle-good")
            page.set_input_files("#file", str(tmp_path / "scratched.png"))
            expect(page.locator("#decision")).to_have_text(re.compile(r"^(anomalous|normal)$"), timeout=20_000)
            expect(page.locator("#decision-note")).to_be_hidden()
            expect(page.locator("#colour-bar")).to_be_visible()
            expect(page.locator("#bar-threshold")).to_be_visible()
            expect(page.locator("#bar-source")).to_contain_text("calibrated on 1 normal image")
            page.wait_for_function("document.getElementById('contour').naturalWidth > 0", timeout=10_000)
            expect(page.locator("#contour")).to_be_visible()
            shot = tmp_path / "serve-page-deploy.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(15)
    artefacts = os.environ.get("VLMAD_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)


def test_page_on_a_bundle_served_by_vlmad_runtime_serve(browser_exe, tiny_bundle, tmp_path):
    """The same page, served by `vlmad-runtime serve BUNDLE` (a real process, no torch in the service's code):
    model line, a scored upload with heatmap, the bundle's built-in shots, and reference uploads switched off."""
    import subprocess
    import sys

    import httpx
    from playwright.sync_api import expect, sync_playwright

    folder, _ = tiny_bundle
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlmad_runtime.cli", "serve", str(folder), "--port", str(port)]
            + ["--data-dir", str(tmp_path / "data")],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "scratched.png").write_bytes(part_image(True))
    try:
        assert wait_until_ready(url, 120, alive=lambda: proc.poll() is None), log.read_text()
        expected = httpx.post(
            url + "/v1/detect", files={"image": ("s.png", part_image(True), "image/png")}, timeout=30
        ).json()["score"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_exe, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1100})
                page.goto(url + "/")
                expect(page.locator("#status")).to_contain_text("ready", timeout=20_000)
                expect(page.locator("#model-info")).to_contain_text("vlmad-tiny-vit")
                expect(page.locator("#manage-status")).to_contain_text("baked in")
                assert page.eval_on_selector("#new-set-upload", "e => e.disabled")
                page.set_input_files("#file", str(tmp_path / "scratched.png"))
                expect(page.locator("#score")).to_have_text(f"{expected:.4f}", timeout=20_000)
                expect(page.locator("#result-meta")).to_contain_text("2-shot memory built in")
                page.wait_for_function("document.getElementById('heat').naturalWidth > 0", timeout=10_000)
                page.screenshot(path=str(tmp_path / "serve-page-bundle.png"), full_page=True)
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    assert "Traceback" not in log.read_text()
