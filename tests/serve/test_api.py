"""The HTTP API as a client sees it (FastAPI TestClient, tiny model): every endpoint and every error path."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.serve.limits import Limits

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart, httpx) is not installed")


def assert_error(res, status: int, code: str, *words: str) -> dict:
    """A JSON error with the expected status/code, a message naming the problem, and no stack trace."""
    assert res.status_code == status, (res.status_code, res.text)
    assert res.headers["content-type"].startswith("application/json")
    body = res.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    for w in words:
        assert w.lower() in body["error"]["message"].lower(), body
    assert "Traceback" not in res.text and 'File "' not in res.text
    assert body["request_id"] == res.headers["x-request-id"]
    return body


def detect(client, data: bytes, query: str = "", name: str = "part.png", ctype: str = "image/png"):
    return client.post(f"/v1/detect{query}", files={"image": (name, data, ctype)})


# ---------------------------------------------------------------------------------------------- happy paths
def test_detect_multipart_json_and_raw_agree_with_the_detector(make_app, make_detector, serve_helpers):
    png = serve_helpers.png(1, (90, 70))
    ref_det = make_detector()
    ref_det.setup("bottle")
    expected = float(ref_det.predict(Image.open(io.BytesIO(png)).convert("RGB")).image_scores[0])
    with serve_helpers.client(make_app()) as c:
        r1 = detect(c, png)
        r2 = c.post("/v1/detect", json={"image_b64": base64.b64encode(png).decode(), "filename": "x.png"})
        r3 = c.post("/v1/detect", content=png, headers={"Content-Type": "image/png"})
        r4 = c.post("/v1/detect", json={"image_b64": "data:image/png;base64," + base64.b64encode(png).decode()})
    for r in (r1, r2, r3, r4):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["score"] == pytest.approx(expected, abs=1e-5)
        assert body["decision"] is None and body["threshold"] is None
        assert body["method"] == "winclip" and body["model"] == "vlmad-tiny-vit" and body["shots"] == 0
        assert body["weights_id"].startswith("checkpoint:")
        assert body["random_weights"] is False and body["warning"] is None
        assert body["image"]["width"] == 90 and body["image"]["height"] == 70 and body["image"]["format"] == "PNG"
        assert set(body["timing_ms"]) == {"read", "decode", "queue", "inference", "postprocess", "total"}
        assert body["batch_size"] >= 1 and body["heatmap"] is None
    assert r1.json()["image"]["filename"] == "part.png" and r2.json()["image"]["filename"] == "x.png"


def test_detect_heatmaps_overlay_raw_color(make_app, make_detector, serve_helpers):
    png = serve_helpers.png(2, (120, 80))
    ref_det = make_detector()
    ref_det.setup("bottle")
    expected_map = ref_det.predict(Image.open(io.BytesIO(png)).convert("RGB")).anomaly_maps[0].numpy()
    with serve_helpers.client(make_app()) as c:
        body = detect(c, png, "?heatmap=all&alpha=0.3").json()
        both = detect(c, png, "?heatmap=both").json()
        listed = detect(c, png, "?heatmap=color,raw").json()
    from vlmad_runtime.serve.app import DetectResponse, Heatmap

    for b in (body, both, listed):  # responses are built by hand: they must match the documented schema
        DetectResponse.model_validate(b)
        assert set(b) == set(DetectResponse.model_fields) and set(b["heatmap"]) == set(Heatmap.model_fields)
    hm = body["heatmap"]
    raw = hm["raw"]
    assert raw["dtype"] == "float32" and raw["byte_order"] == "little" and raw["shape"] == [64, 64]
    amap = np.frombuffer(base64.b64decode(raw["data_b64"]), dtype="<f4").reshape(raw["shape"])
    np.testing.assert_allclose(amap, expected_map, atol=1e-5)
    assert hm["min"] == pytest.approx(float(amap.min())) and hm["max"] == pytest.approx(float(amap.max()))
    overlay = Image.open(io.BytesIO(base64.b64decode(hm["overlay_png_b64"])))
    assert overlay.format == "PNG" and overlay.size == (120, 80) and hm["overlay_size"] == [120, 80]
    assert hm["alpha"] == pytest.approx(0.3)
    color = Image.open(io.BytesIO(base64.b64decode(hm["color_png_b64"])))
    assert color.size == (64, 64) and color.mode == "RGB"
    assert both["heatmap"]["overlay_png_b64"] and both["heatmap"]["raw"] and not both["heatmap"]["color_png_b64"]
    assert listed["heatmap"]["color_png_b64"] and listed["heatmap"]["raw"] and not listed["heatmap"]["overlay_png_b64"]


def test_large_image_overlay_is_capped(make_app, serve_helpers):
    png = serve_helpers.png(3, (1500, 300))
    with serve_helpers.client(make_app(limits=Limits(overlay_max_side=400))) as c:
        hm = detect(c, png, "?heatmap=overlay").json()["heatmap"]
    assert hm["overlay_size"] == [400, 80]


def test_threshold_gives_decisions_and_deploy_mismatch_warns(make_app, serve_helpers, tmp_path):
    from vlmad_runtime.serve.app import load_deploy

    deploy = tmp_path / "deploy.json"
    deploy.write_text(
        json.dumps(
            {
                "format": 2,
                "threshold": 0.0,
                "method": "aprilgan",
                "class_name": "screw",
                "expected_false_alarm_rate": 0.01,
                "calibration": {"mode": "normal-quantile", "n_images": 9},
                "fingerprint": {"model": "ViT-L-14-336", "shots": 4},
                "pixel": None,
                "detector": {"model": "ViT-L-14-336", "shots": 4},
                "created": "2026-01-01",
                "vlmad_version": "0.2.0",
            }
        )
    )
    data = load_deploy(deploy).record  # the record only: warnings; the fingerprint check: test_deploy_check.py
    with serve_helpers.client(make_app(threshold=data["threshold"], deploy=data, deploy_path=str(deploy))) as c:
        body = detect(c, serve_helpers.png(4)).json()
        info = c.get("/v1/info").json()
    assert body["threshold"] == 0.0 and body["decision"] == "anomalous"  # score >= 0 always
    assert info["threshold"] == 0.0 and info["deploy"]["path"] == str(deploy)
    assert info["deploy"]["expected_false_alarm_rate"] == 0.01
    assert info["deploy"]["calibration_mode"] == "normal-quantile"
    for words in ("method 'aprilgan'", "class 'screw'", "model 'ViT-L-14-336'", "4-shot mode"):
        assert any(words in w for w in info["warnings"]), words
    with serve_helpers.client(make_app(threshold=1.5)) as c:
        assert detect(c, serve_helpers.png(4)).json()["decision"] == "normal"


def test_load_deploy_errors(tmp_path):
    from vlmad_runtime.errors import VlmadError
    from vlmad_runtime.serve.app import load_deploy

    cases = {
        "missing.json": None,
        "bad.json": "{not json",
        "nothr.json": '{"method": "winclip"}',
        "nan.json": '{"threshold": "abc"}',
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(VlmadError):
            load_deploy(tmp_path / name)


def test_random_weights_are_flagged_everywhere(make_app, make_detector, serve_helpers):
    with serve_helpers.client(make_app(detector=make_detector(random=True))) as c:
        body = detect(c, serve_helpers.png(5), "?heatmap=overlay").json()
        info = c.get("/v1/info").json()
    assert body["random_weights"] is True and body["warning"] == RANDOM_WEIGHTS_STAMP
    assert info["random_weights"] is True and info["warning"] == RANDOM_WEIGHTS_STAMP
    assert RANDOM_WEIGHTS_STAMP in info["warnings"]
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["heatmap"]["overlay_png_b64"]))))
    assert (overlay[:3] == 0).all(axis=-1).mean() > 0.5  # the dark stamp band at the top


def test_health_ready_info_metrics_openapi_page(make_app, serve_helpers):
    with serve_helpers.client(make_app()) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        info = c.get("/v1/info").json()
        assert info["ready"] and info["class_name"] == "bottle" and info["detector"]["method"] == "winclip"
        assert info["batching"] == {"max_batch_size": 8, "max_wait_ms": 10.0}
        assert info["limits"]["max_pixels"] == Limits().max_pixels
        detect(c, serve_helpers.png(6))
        detect(c, b"not an image")
        metrics = c.get("/metrics")
        schema = c.get("/openapi.json").json()
        page = c.get("/")
        js = c.get("/static/app.js")
        css = c.get("/static/app.css")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'vlmad_http_requests_total{method="POST",route="/v1/detect",status="200"} 1' in text
    assert 'vlmad_http_requests_total{method="POST",route="/v1/detect",status="400"} 1' in text
    assert 'vlmad_errors_total{code="invalid_image"} 1' in text
    assert "vlmad_batch_size_count 1" in text and "vlmad_inference_duration_seconds_count 1" in text
    assert 'vlmad_http_request_duration_seconds_count{route="/v1/detect"} 2' in text
    assert "vlmad_model_ready 1" in text and "vlmad_queue_depth 0" in text
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="[^"]*",?)*\})? [-+0-9.eEInfa]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    for path in (
        "/v1/detect",
        "/v1/references",
        "/v1/references/{name}",
        "/v1/info",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in schema["paths"], path
    body_types = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body_types)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for res in (page, js, css):
        assert res.status_code == 200
        assert not re.search(r"(src|href)=\"(https?:)?//", res.text), "the page must not load external resources"
        assert "cdn" not in res.text.lower()
    assert 'id="random-banner"' in page.text and RANDOM_WEIGHTS_STAMP in page.text


# ---------------------------------------------------------------------------------------------- reference sets
def test_reference_sets_crud_and_few_shot_matches_fit(make_app, make_detector, serve_helpers):
    refs = [serve_helpers.png(10 + i, (64, 64)) for i in range(3)]
    query = serve_helpers.png(20, (64, 64))
    det = make_detector()
    det.setup("bottle")
    det.fit([Image.open(io.BytesIO(b)).convert("RGB") for b in refs])
    expected = float(det.predict(Image.open(io.BytesIO(query)).convert("RGB")).image_scores[0])
    with serve_helpers.client(make_app()) as c:
        assert c.get("/v1/references").json() == {"sets": []}
        r = c.post(
            "/v1/references/good-1", files=[("images", (f"g{i}.png", b, "image/png")) for i, b in enumerate(refs)]
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["name"] == "good-1" and created["count"] == 3 and created["shots"] == 3
        assert created["memory_cached"] is True and created["fit_ms"] >= 0
        assert [i["original_name"] for i in created["images"]] == ["g0.png", "g1.png", "g2.png"]
        got = c.get("/v1/references/good-1").json()
        assert got["version"] == created["version"] and got["count"] == 3
        assert [s["name"] for s in c.get("/v1/references").json()["sets"]] == ["good-1"]
        few = detect(c, query, "?references=good-1").json()
        zero = detect(c, query).json()
        few_again = detect(c, query, "?references=good-1").json()
        assert few["score"] == pytest.approx(expected, abs=1e-5)
        assert few["method"] == "winclip+" and few["shots"] == 3 and few["references"] == "good-1"
        assert few["reference_version"] == created["version"]
        assert zero["method"] == "winclip" and zero["shots"] == 0 and zero["score"] != pytest.approx(few["score"])
        assert few_again["score"] == pytest.approx(few["score"], abs=1e-6)
        # JSON upload, then replace
        r = c.post("/v1/references/other", json={"images_b64": [base64.b64encode(refs[0]).decode()]})
        assert r.status_code == 201 and r.json()["count"] == 1
        assert_error(
            c.post("/v1/references/other", json={"images_b64": [base64.b64encode(refs[1]).decode()]}),
            409,
            "reference_set_exists",
            "already exists",
        )
        r = c.post(
            "/v1/references/other?replace=true",
            files=[("images", ("a.png", refs[1], "image/png")), ("images", ("b.png", refs[2], "image/png"))],
        )
        assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["shots"] == 2
        other = detect(c, query, "?references=other").json()
        assert other["shots"] == 2 and other["reference_version"] == r.json()["version"]
        # delete
        d = c.delete("/v1/references/other")
        assert d.status_code == 200 and d.json()["deleted"] == "other"
        assert_error(c.get("/v1/references/other"), 404, "unknown_reference_set", "other")
        assert_error(detect(c, query, "?references=other"), 404, "unknown_reference_set", "other")
        assert_error(c.delete("/v1/references/other"), 404, "unknown_reference_set")
        metrics = c.get("/metrics").text
    assert 'vlmad_images_scored_total{mode="few-shot"} 3' in metrics
    assert "vlmad_reference_fits_total 3" in metrics


def test_reference_sets_survive_a_restart(tmp_path, make_app, make_detector, serve_helpers):
    data_dir = tmp_path / "persist"
    refs = [serve_helpers.png(30 + i, (64, 64)) for i in range(2)]
    query = serve_helpers.png(40)
    with serve_helpers.client(make_app(data_dir=data_dir)) as c:
        created = c.post(
            "/v1/references/line-a", files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(refs)]
        ).json()
        before = detect(c, query, "?references=line-a").json()["score"]
    # a new process would see exactly the files on disk: a fresh app with a fresh detector on the same data dir
    (data_dir / "references" / ".tmp-crashed.zip").write_bytes(b"half a zip")  # an interrupted write
    (data_dir / "references" / "broken.zip").write_bytes(b"not a zip")
    with serve_helpers.client(make_app(detector=make_detector(), data_dir=data_dir)) as c:
        sets = c.get("/v1/references").json()["sets"]
        assert [s["name"] for s in sets] == ["line-a"]
        assert sets[0]["version"] == created["version"] and sets[0]["memory_cached"] is False
        after = detect(c, query, "?references=line-a").json()
        info = c.get("/v1/info").json()
    assert after["score"] == pytest.approx(before, abs=1e-6) and after["shots"] == 2
    assert any("broken.zip" in w for w in info["warnings"])
    assert not (data_dir / "references" / ".tmp-crashed.zip").exists()
    assert sorted(p.name for p in (data_dir / "references").iterdir()) == ["broken.zip", "line-a.zip"]


def test_requests_for_different_sets_are_batched_per_set(make_app, serve_helpers):
    refs = {
        name: [serve_helpers.png(50 + i + 10 * k, (64, 64)) for i in range(2)]
        for k, name in enumerate(("set-a", "set-b"))
    }
    with serve_helpers.client(make_app(max_batch_size=8, max_wait_ms=300)) as c:
        for name, imgs in refs.items():
            assert (
                c.post(
                    f"/v1/references/{name}", files=[("images", ("x.png", b, "image/png")) for b in imgs]
                ).status_code
                == 201
            )
        single = {n: detect(c, serve_helpers.png(60), f"?references={n}").json()["score"] for n in refs}
        single[None] = detect(c, serve_helpers.png(60)).json()["score"]
        results: list[dict] = []
        lock = threading.Lock()

        def hit(name):
            r = detect(c, serve_helpers.png(60), f"?references={name}" if name else "")
            with lock:
                results.append(dict(r.json(), asked=name))

        threads = [threading.Thread(target=hit, args=(n,)) for n in ["set-a", "set-b", None] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(results) == 9
    for r in results:
        assert r["references"] == r["asked"]
        assert r["score"] == pytest.approx(single[r["asked"]], abs=1e-5)  # right memory for every request
    assert max(r["batch_size"] for r in results) >= 2  # concurrent requests shared forwards


# ---------------------------------------------------------------------------------------------- error paths
def test_detect_error_paths(make_app, serve_helpers):
    png = serve_helpers.png(7)
    limits = Limits(max_upload_bytes=200_000, max_pixels=500_000)
    with serve_helpers.client(make_app(limits=limits)) as c:
        assert_error(
            c.post("/v1/detect", content=b"hello", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
            "text/plain",
        )
        assert_error(c.post("/v1/detect", content=png), 415, "missing_content_type")
        assert_error(
            c.post("/v1/detect", files={"picture": ("a.png", png, "image/png")}),
            400,
            "missing_field",
            "image",
            "picture",
        )
        assert_error(
            c.post("/v1/detect", data={"note": "x"}, files={"other": ("a.png", png, "image/png")}), 400, "missing_field"
        )
        assert_error(
            c.post(
                "/v1/detect", files=[("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
            ),
            400,
            "too_many_images",
        )
        assert_error(detect(c, png, ctype="text/html"), 415, "unsupported_media_type", "text/html")
        assert_error(detect(c, b"this is not an image at all"), 400, "invalid_image", "not a recognisable image")
        assert_error(detect(c, b""), 400, "empty_image")
        assert_error(detect(c, png[: len(png) // 2]), 400, "invalid_image", "truncated")
        gif = serve_helpers.png(8, fmt="GIF")
        assert_error(detect(c, gif, ctype="image/gif"), 415, "unsupported_image_format", "GIF")
        assert_error(detect(c, serve_helpers.bomb(2000, 2000)), 413, "too_many_pixels", "2000x2000")
        assert_error(detect(c, serve_helpers.bomb(200_000, 200_000)), 413, "too_many_pixels", "bomb")
        big = serve_helpers.png(9, (400, 400))  # ~480 kB of noise > 200 kB
        assert_error(detect(c, big), 413, "request_too_large")
        assert_error(
            c.post("/v1/detect", content=b"{nope", headers={"Content-Type": "application/json"}), 400, "invalid_json"
        )
        assert_error(c.post("/v1/detect", json=[1, 2]), 400, "invalid_json", "object")
        assert_error(c.post("/v1/detect", json={"filename": "a.png"}), 400, "missing_field", "image_b64")
        assert_error(c.post("/v1/detect", json={"image_b64": "%%%not base64%%%"}), 400, "invalid_base64")
        assert_error(c.post("/v1/detect", json={"image_b64": 12}), 400, "invalid_field")
        assert_error(
            c.post("/v1/detect", json={"image_b64": base64.b64encode(png).decode(), "imgae": 1}),
            400,
            "unknown_field",
            "imgae",
        )
        assert_error(
            c.post("/v1/detect", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}),
            400,
            "invalid_multipart",
        )
        assert_error(
            c.post("/v1/detect", content=b"abc", headers={"Content-Type": "multipart/form-data"}),
            400,
            "invalid_multipart",
            "boundary",
        )
        assert_error(detect(c, png, "?references=nope"), 404, "unknown_reference_set", "nope")
        assert_error(detect(c, png, "?references=../../etc"), 400, "invalid_reference_set_name")
        assert_error(detect(c, png, "?heatmap=pretty"), 400, "invalid_query", "pretty")
        assert_error(detect(c, png, "?alpha=2"), 422, "invalid_parameter", "alpha")
        assert_error(c.get("/v1/detect"), 405, "method_not_allowed")
        assert_error(c.get("/v2/nothing"), 404, "not_found")
        # after all that, the server still works
        assert detect(c, png).status_code == 200
        assert c.get("/readyz").status_code == 200


def test_reference_error_paths_and_names(make_app, serve_helpers, tmp_path):
    png = serve_helpers.png(11)
    data_dir = tmp_path / "refdata"
    limits = Limits(max_reference_images=3)
    with serve_helpers.client(make_app(data_dir=data_dir, limits=limits)) as c:
        for bad in ("a.b", "x" * 65, "a%20b", "ünï", "a~b"):
            assert_error(
                c.post(f"/v1/references/{bad}", files={"images": ("a.png", png, "image/png")}),
                400,
                "invalid_reference_set_name",
            )
            assert_error(c.get(f"/v1/references/{bad}"), 400, "invalid_reference_set_name")
            assert_error(c.delete(f"/v1/references/{bad}"), 400, "invalid_reference_set_name")
        for path in ("/v1/references/..%2F..%2Fescape", "/v1/references/a/b", "/v1/references/%2e%2e"):
            res = c.post(path, files={"images": ("a.png", png, "image/png")})
            assert res.status_code in (400, 404, 405), (path, res.status_code)
            assert res.json()["error"]["code"]
        assert_error(c.get("/v1/references/missing"), 404, "unknown_reference_set", "missing")
        assert_error(
            c.post("/v1/references/s1", files={"other": ("a.png", png, "image/png")}), 400, "missing_field", "images"
        )
        assert_error(c.post("/v1/references/s1", json={"images_b64": []}), 400, "no_images")
        assert_error(c.post("/v1/references/s1", json={"images_b64": "abc"}), 400, "invalid_field")
        assert_error(c.post("/v1/references/s1", json={}), 400, "missing_field", "images_b64")
        assert_error(
            c.post("/v1/references/s1", files=[("images", ("a.png", png, "image/png"))] * 4),
            400,
            "too_many_images",
            "at most 3",
        )
        assert_error(
            c.post(
                "/v1/references/s1",
                files=[("images", ("a.png", png, "image/png")), ("images", ("b.png", b"junk", "image/png"))],
            ),
            400,
            "invalid_image",
            "images[1] (b.png)",
        )
        assert_error(
            c.post("/v1/references/s1", content=png, headers={"Content-Type": "image/png"}),
            415,
            "unsupported_media_type",
        )
        assert c.get("/v1/references").json() == {"sets": []}  # nothing half-stored
    # nothing outside <data-dir>/references was written, and nothing but set files inside it
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == ["references"]
    assert not (tmp_path / "escape.zip").exists() and not (tmp_path / "escape").exists()


def test_api_key_is_enforced_except_on_health_and_page(make_app, serve_helpers):
    png = serve_helpers.png(12)
    with serve_helpers.client(make_app(api_key="s3cret-key")) as c:
        for method, path in (
            ("get", "/v1/info"),
            ("get", "/v1/references"),
            ("get", "/metrics"),
            ("post", "/v1/detect"),
            ("post", "/v1/references/a"),
            ("delete", "/v1/references/a"),
            ("get", "/v1/references/a"),
        ):
            res = getattr(c, method)(path)
            body = assert_error(res, 401, "unauthorized", "api key")
            assert res.headers["www-authenticate"] == "Bearer"
            assert "X-API-Key" in body["error"]["hint"]
            assert_error(getattr(c, method)(path, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
            assert_error(getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        ok = c.post("/v1/detect", files={"image": ("a.png", png, "image/png")}, headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        bearer = c.post(
            "/v1/detect", files={"image": ("a.png", png, "image/png")}, headers={"Authorization": "Bearer s3cret-key"}
        )
        assert bearer.status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        info = c.get("/v1/info", headers={"X-API-Key": "s3cret-key"}).json()
        assert info["api_key_required"] is True and "s3cret" not in json.dumps(info)


def SlowDetector(inner, delay: float = 0.0):  # noqa: N802 (used like a class)
    """The same detector (same state, same class behaviour) whose ``predict`` waits on ``gate`` and can be told
    to raise."""

    class Slow(type(inner)):
        def predict(self, images):
            self.entered.set()
            self.gate.wait(30)
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("secret internal detail /srv/weights.bin")
            return super().predict(images)

    slow = Slow.__new__(Slow)
    slow.__dict__.update(vars(inner))
    slow.delay, slow.fail, slow.gate, slow.entered = delay, False, threading.Event(), threading.Event()
    slow.gate.set()
    return slow


def test_timeout_overload_and_internal_errors_are_json(make_app, make_detector, serve_helpers):
    png = serve_helpers.png(13)
    slow = SlowDetector(make_detector())
    limits = Limits(request_timeout_s=1.0, max_queue=1)
    app = make_app(detector=slow, limits=limits, max_wait_ms=0)
    batcher = None

    def wait_for(cond, what):
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    with serve_helpers.client(app) as c:
        batcher = app.state.service.worker.batcher
        assert detect(c, png).status_code == 200
        slow.gate.clear()  # the worker blocks in predict: one request runs, one waits, the next finds a full queue
        slow.entered.clear()
        responses: list = []
        threads = [threading.Thread(target=lambda: responses.append(detect(c, png))) for _ in range(2)]
        threads[0].start()
        wait_for(slow.entered.is_set, "first request never reached the model")
        threads[1].start()
        wait_for(lambda: batcher.depth == 1, "second request never queued")
        overloaded = detect(c, png)
        for t in threads:
            t.join(10)
        slow.gate.set()
        assert_error(overloaded, 503, "overloaded")
        assert overloaded.headers["retry-after"] == "1"
        assert sorted(r.status_code for r in responses) == [504, 504]
        assert_error(responses[0], 504, "timeout", "1 s")
        wait_for(lambda: batcher.busy_for() is None, "worker did not finish the blocked batch")
        slow.fail = True
        res = detect(c, png)
        body = assert_error(res, 500, "internal_error")
        assert "secret" not in res.text and "/srv" not in res.text and body["request_id"] in body["error"]["hint"]
        slow.fail = False
        assert detect(c, png).status_code == 200  # the worker thread survived
        assert 'vlmad_errors_total{code="timeout"} 2' in c.get("/metrics").text


def test_readiness_while_loading_and_after_a_failed_load(make_app, make_detector, serve_helpers):
    gate = threading.Event()
    det = make_detector()

    def loader():
        gate.wait(30)
        return det

    with serve_helpers.client(make_app(loader=loader), ready=False) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        res = detect(c, serve_helpers.png(14))
        assert_error(res, 503, "model_loading")
        assert res.headers["retry-after"] == "5"
        assert "vlmad_model_ready 0" in c.get("/metrics").text
        gate.set()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert detect(c, serve_helpers.png(14)).status_code == 200

    def broken():
        raise RuntimeError("weights file vanished")

    with serve_helpers.client(make_app(loader=broken), ready=False) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "weights file vanished"}
        assert_error(detect(c, serve_helpers.png(14)), 503, "model_failed", "weights file vanished")
        assert c.get("/healthz").status_code == 200


def test_aprilgan_detector_behind_the_service(make_app, make_detector, serve_helpers):
    refs = [serve_helpers.png(70 + i, (56, 56)) for i in range(2)]
    query = serve_helpers.png(80, (56, 56))
    det = make_detector("aprilgan")
    det.setup("bottle")
    det.fit([Image.open(io.BytesIO(b)).convert("RGB") for b in refs])
    expected = float(det.predict(Image.open(io.BytesIO(query)).convert("RGB")).image_scores[0])
    with serve_helpers.client(make_app(detector=make_detector("aprilgan"))) as c:
        assert (
            c.post("/v1/references/ag", files=[("images", ("x.png", b, "image/png")) for b in refs]).status_code == 201
        )
        zero = detect(c, query).json()
        few = detect(c, query, "?references=ag&heatmap=raw").json()
    assert zero["method"] == "aprilgan" and zero["shots"] == 0
    assert few["shots"] == 2 and few["score"] == pytest.approx(expected, abs=1e-5)
    assert few["heatmap"]["raw"]["shape"] == [56, 56]


def test_preprocessing_matches_the_file_loader(make_app, serve_helpers, tmp_path):
    """A 16-bit PNG and an EXIF-rotated JPEG score as `vlmad detect` reads them from disk."""
    from vlmad_runtime.images import load_image

    arr16 = (np.random.default_rng(0).random((40, 50)) * 65535).astype(np.uint16)
    p16 = tmp_path / "gray16.png"
    Image.fromarray(arr16).save(p16)
    jpg = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(serve_helpers.png(15, (60, 30)))).save(jpg, exif=exif.tobytes())
    app = make_app()
    with serve_helpers.client(app) as c:
        det = app.state.service.worker.model.detector
        for path in (p16, jpg):
            body = detect(c, path.read_bytes(), "?heatmap=raw").json()
            img = load_image(path)
            assert [body["image"]["width"], body["image"]["height"]] == list(img.size)
            with torch.inference_mode():
                expected = det.predict([img])  # the method's own file pipeline
            assert body["score"] == pytest.approx(float(expected.image_scores[0]), abs=1e-5)
    assert (body["image"]["width"], body["image"]["height"]) == (30, 60)  # EXIF orientation 6 applied


def test_replaced_set_while_queued_uses_and_reports_the_new_version(make_app, make_detector, serve_helpers):
    slow = SlowDetector(make_detector())
    app = make_app(detector=slow, max_wait_ms=0)
    refs = [serve_helpers.png(90 + i, (64, 64)) for i in range(3)]

    def wait_for(cond, what):
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    with serve_helpers.client(app) as c:
        service = app.state.service
        batcher = service.worker.batcher
        v1 = c.post("/v1/references/s", files=[("images", ("a.png", refs[0], "image/png"))]).json()["version"]
        slow.gate.clear()
        slow.entered.clear()
        got: list = []
        blocker = threading.Thread(target=lambda: got.append(detect(c, serve_helpers.png(1))))
        blocker.start()
        wait_for(slow.entered.is_set, "zero-shot batch never started")
        queued = threading.Thread(target=lambda: got.append(detect(c, serve_helpers.png(2), "?references=s")))
        queued.start()
        wait_for(lambda: batcher.depth == 1, "few-shot request never queued")  # key (s, v1)
        replace = threading.Thread(
            target=lambda: got.append(
                c.post("/v1/references/s?replace=true", files=[("images", ("b.png", b, "image/png")) for b in refs[1:]])
            )
        )
        replace.start()
        # stored on disk as v2; its warm-up fit is queued behind the few-shot request
        wait_for(lambda: service.store.get("s").version != v1 and batcher.depth == 2, "replace never queued")
        slow.gate.set()
        for t in (blocker, queued, replace):
            t.join(30)
    by_kind = {
        (
            "ref"
            if r.request.method == "POST" and "references/" in str(r.request.url)
            else "few"
            if "references=s" in str(r.request.url)
            else "zero"
        ): r
        for r in got
    }
    v2 = by_kind["ref"].json()["version"]
    assert v2 != v1 and by_kind["zero"].status_code == 200
    few = by_kind["few"].json()
    assert few["reference_version"] == v2 and few["shots"] == 2


def test_readyz_reports_a_stalled_worker(make_app, serve_helpers, monkeypatch):
    app = make_app()
    with serve_helpers.client(app) as c:
        monkeypatch.setattr(app.state.service.worker.batcher, "busy_for", lambda: 4000.0)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "stalled" and "4000 s" in r.json()["error"]
        assert c.get("/healthz").status_code == 200
