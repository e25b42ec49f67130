"""Units of the service: dynamic batcher, reference store, detector memory swap, limits, Prometheus text."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from vlmad.serve.detector_model import capture_memory, restore_memory
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.serve.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from vlmad_runtime.serve.limits import ApiError, Limits, decode_image, validate_set_name
from vlmad_runtime.serve.metrics import ServiceMetrics
from vlmad_runtime.serve.references import MemoryCache, ReferenceStore


# ---------------------------------------------------------------------------------------------- batcher
def collecting_batcher(**kw):
    seen: list[tuple] = []

    def handler(key, payloads):
        seen.append((key, list(payloads)))
        return [(key, p) for p in payloads]

    return DynamicBatcher(handler, **kw), seen


def test_batcher_groups_per_key_in_arrival_order_and_caps_batch_size():
    b, seen = collecting_batcher(max_batch_size=3, max_wait_s=0.0)
    jobs = [b.submit(k, i) for i, k in enumerate(["a", "b", "a", "a", "a", "b", None])]
    b.start()
    results = [j.future.result(10) for j in jobs]
    b.close()
    assert results == [(k, i) for i, k in enumerate(["a", "b", "a", "a", "a", "b", None])]
    assert seen == [("a", [0, 2, 3]), ("b", [1, 5]), ("a", [4]), (None, [6])]


def test_batcher_waits_up_to_max_wait_for_a_batch_to_fill():
    b, seen = collecting_batcher(max_batch_size=4, max_wait_s=0.3)
    b.start()
    first = b.submit("k", 0)
    time.sleep(0.05)
    rest = [b.submit("k", i) for i in (1, 2, 3)]  # fills the batch before the wait ends
    assert [j.future.result(5)[1] for j in [first, *rest]] == [0, 1, 2, 3]
    t0 = time.perf_counter()
    lone = b.submit("k", 9)
    lone.future.result(5)
    waited = time.perf_counter() - t0
    b.close()
    assert seen[0] == ("k", [0, 1, 2, 3])
    assert 0.25 <= waited < 2.0  # a lone request waits max_wait, not forever


def test_batcher_errors_cancellation_queue_limit_and_close():
    calls = []

    def handler(key, payloads):
        calls.append(list(payloads))
        if "boom" in payloads:
            raise ValueError("boom")
        return [ValueError("bad item") if p == "bad" else p for p in payloads]

    b = DynamicBatcher(handler, max_batch_size=8, max_wait_s=0.0, max_queue=3)
    j1, j2, j3 = b.submit("k", "boom"), b.submit("x", "bad"), b.submit("y", "skip")
    with pytest.raises(QueueFullError):
        b.submit("k", "one too many")
    assert j3.future.cancel()  # cancelled before its batch starts: never reaches the handler
    b.start()
    with pytest.raises(ValueError, match="boom"):
        j1.future.result(5)
    with pytest.raises(ValueError, match="bad item"):
        j2.future.result(5)
    assert b.submit("k", "fine").future.result(5) == "fine"  # the worker survived both failures
    assert b.call_soon(lambda: threading.current_thread().name).future.result(5) == "vlmad-model-worker"
    assert ["skip"] not in calls
    b.close()
    with pytest.raises(BatcherClosedError):
        b.submit("k", "late")
    assert not b.alive


def test_batcher_run_from_asyncio_and_cancel_on_timeout():
    gate = threading.Event()

    def handler(key, payloads):
        gate.wait(5)
        return list(payloads)

    b = DynamicBatcher(handler, max_batch_size=1, max_wait_s=0.0)
    b.start()

    async def main():
        first = asyncio.ensure_future(b.run("k", 1))  # occupies the worker
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.run("k", 2), 0.1)  # queued, then cancelled by the timeout
        gate.set()
        return await first

    assert asyncio.run(main()) == 1
    assert b.depth == 0
    b.close()


# ---------------------------------------------------------------------------------------------- references
def rgb(seed: int, size=(32, 24)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def test_store_round_trip_atomic_replace_and_restart(tmp_path):
    store = ReferenceStore(tmp_path)
    info, created = store.put("good", [rgb(0), rgb(1)], ["a.png", None])
    assert created and info.count == 2 and [i["original_name"] for i in info.images] == ["a.png", ""]
    _, images = store.load_images("good")
    assert [np.asarray(i).tolist() for i in images] == [np.asarray(rgb(0)).tolist(), np.asarray(rgb(1)).tolist()]
    with pytest.raises(ApiError) as err:
        store.put("good", [rgb(2)])
    assert err.value.status == 409
    info2, created2 = store.put("good", [rgb(2)], replace=True)
    assert not created2 and info2.version != info.version and info2.count == 1
    assert sorted(p.name for p in store.root.iterdir()) == ["good.zip"]  # no temp files left
    with zipfile.ZipFile(store.root / "good.zip") as zf:
        assert sorted(zf.namelist()) == ["000.png", "manifest.json"]
    again = ReferenceStore(tmp_path)
    assert again.names() == ["good"] and again.get("good").version == info2.version
    again.delete("good")
    assert ReferenceStore(tmp_path).names() == []
    with pytest.raises(ApiError) as err:
        again.get("good")
    assert err.value.status == 404


def test_store_failed_write_keeps_the_old_set(tmp_path, monkeypatch):
    store = ReferenceStore(tmp_path)
    old, _ = store.put("s", [rgb(0)])
    import vlmad_runtime.serve.references as refs

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(refs.os, "replace", crash)
    with pytest.raises(OSError):
        store.put("s", [rgb(1), rgb(2)], replace=True)
    monkeypatch.undo()
    assert sorted(p.name for p in store.root.iterdir()) == ["s.zip"]
    assert ReferenceStore(tmp_path).get("s").version == old.version


def test_set_names_are_strict(tmp_path):
    for ok in ("a", "A-b_9", "x" * 64):
        assert validate_set_name(ok) == ok
    for bad in ("", "x" * 65, "a.b", "../x", "a/b", "a b", "é", ".hidden", "a\x00", "a\n"):
        with pytest.raises(ApiError) as err:
            validate_set_name(bad)
        assert err.value.status == 400
    store = ReferenceStore(tmp_path)
    with pytest.raises(ApiError):
        store.put("../../evil", [rgb(0)])
    assert not list(tmp_path.parent.glob("evil*"))


def test_store_limits_number_of_sets(tmp_path):
    store = ReferenceStore(tmp_path, max_sets=1)
    store.put("one", [rgb(0)])
    with pytest.raises(ApiError) as err:
        store.put("two", [rgb(1)])
    assert err.value.status == 507
    store.put("one", [rgb(1)], replace=True)  # replacing is always possible


@pytest.mark.parametrize("method", ["winclip", "aprilgan"])
def test_memory_capture_and_restore_equal_a_fresh_fit(make_detector, method):
    det = make_detector(method)
    det.setup("bottle")
    size = det.image_size
    refs_a = [rgb(10 + i, (size, size)) for i in range(2)]
    refs_b = [rgb(20 + i, (size, size)) for i in range(3)]
    query = torch.randn(2, 3, size, size)
    zero = det.predict(query).image_scores
    mem_a = capture_memory(det, refs_a)
    fit_a = det.predict(query)
    mem_b = capture_memory(det, refs_b)
    fit_b = det.predict(query).image_scores
    assert mem_a.shots == 2 and mem_b.shots == 3 and mem_a.nbytes > 0
    restore_memory(det, mem_a)
    again_a = det.predict(query)
    torch.testing.assert_close(again_a.image_scores, fit_a.image_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(again_a.anomaly_maps, fit_a.anomaly_maps, rtol=0, atol=1e-6)
    restore_memory(det, None)
    torch.testing.assert_close(det.predict(query).image_scores, zero, rtol=0, atol=1e-6)
    restore_memory(det, mem_b)
    torch.testing.assert_close(det.predict(query).image_scores, fit_b, rtol=0, atol=1e-6)
    assert det.shots == 3
    # the cached memory is not changed by later fits / resets
    det.reset_references()
    det.fit(refs_b)
    restore_memory(det, mem_a)
    torch.testing.assert_close(det.predict(query).image_scores, fit_a.image_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["winclip", "aprilgan"])
def test_memory_goes_through_the_detector_state_protocol(make_detector, method):
    """No attribute diffing: what serve keeps is exactly ``export_references()``, and a state that does not fit
    the detector is refused with a hint instead of silently producing other scores."""
    det = make_detector(method)
    det.setup("bottle")
    size = det.image_size
    mem = capture_memory(det, [rgb(30, (size, size))])
    assert mem.state.keys() == det.export_references().keys() and mem.state["shots"] == 1
    assert det.export_references()["shots"] == 1
    det.reset_references()
    assert det.export_references()["shots"] == 0
    wrong = dict(mem.state)
    if method == "winclip":
        wrong["window_bank"] = {99: next(iter(mem.state["window_bank"].values()))}
    else:
        wrong["banks"] = mem.state["banks"][:1]
    with pytest.raises(VlmadError, match="fit the references again"):
        det.load_references(wrong)
    det.load_references({"shots": 0})
    assert det.shots == 0


def test_memory_cache_is_lru_bounded_in_bytes_and_drops_old_versions():
    from vlmad_runtime.serve.model import ReferenceMemory

    def mem(n):
        return ReferenceMemory({"t": torch.zeros(n)}, 1, n * 4)

    cache = MemoryCache(max_bytes=1000)
    cache.put(("a", "1"), mem(100))
    cache.put(("b", "1"), mem(100))
    assert cache.get(("a", "1")) is not None  # a is now most recent
    cache.put(("c", "1"), mem(100))  # 1200 bytes > 1000: evicts b (least recent)
    assert ("b", "1") not in cache and ("a", "1") in cache and ("c", "1") in cache
    cache.put(("a", "2"), mem(10))  # a new version replaces the old one
    assert ("a", "1") not in cache and ("a", "2") in cache
    cache.put(("huge", "1"), mem(10_000))  # larger than the budget alone: kept (the newest always is)
    assert len(cache) == 1 and ("huge", "1") in cache
    cache.drop("huge")
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------------- limits
def test_decode_image_converts_like_the_file_loader(tmp_path):
    from vlmad_runtime.images import load_image

    limits = Limits()
    rgba = Image.fromarray((np.random.default_rng(1).random((20, 30, 4)) * 255).astype(np.uint8), "RGBA")
    path = tmp_path / "a.png"
    rgba.save(path)
    img, fmt = decode_image(path.read_bytes(), limits)
    assert fmt == "PNG" and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(load_image(path)))


def test_decode_image_refusals():
    limits = Limits(max_upload_bytes=10_000, max_pixels=100, allowed_formats=("PNG",))
    buf = io.BytesIO()
    Image.new("RGB", (5, 5)).save(buf, "JPEG")
    cases = {
        b"": (400, "empty_image"),
        b"x" * 20_000: (413, "image_too_large"),
        b"GIF89a junk": (400, "invalid_image"),
        buf.getvalue(): (415, "unsupported_image_format"),
    }
    big = io.BytesIO()
    Image.new("RGB", (11, 10)).save(big, "PNG")
    cases[big.getvalue()] = (413, "too_many_pixels")
    for data, (status, code) in cases.items():
        with pytest.raises(ApiError) as err:
            decode_image(data, limits)
        assert (err.value.status, err.value.code) == (status, code), data[:20]


# ---------------------------------------------------------------------------------------------- metrics
def test_prometheus_text_format():
    m = ServiceMetrics()
    m.requests.inc(route="/v1/detect", method="POST", status="200")
    m.requests.inc(route="/v1/detect", method="POST", status="200")
    m.errors.inc(code='we"ird\ncode')
    m.batch_size.observe(3)
    m.batch_size.observe(8)
    m.add_gauge("vlmad_test_gauge", "A gauge.", lambda: 2.5)
    text = m.render()
    assert 'vlmad_http_requests_total{method="POST",route="/v1/detect",status="200"} 2' in text
    assert 'vlmad_errors_total{code="we\\"ird\\ncode"} 1' in text
    assert 'vlmad_batch_size_bucket{le="2"} 0' in text and 'vlmad_batch_size_bucket{le="4"} 1' in text
    assert 'vlmad_batch_size_bucket{le="8"} 2' in text and 'vlmad_batch_size_bucket{le="+Inf"} 2' in text
    assert "vlmad_batch_size_count 2" in text and "vlmad_batch_size_sum 11" in text
    assert "# TYPE vlmad_batch_size histogram" in text and "vlmad_test_gauge 2.5" in text
    assert m.batch_size.count_and_sum() == (2, 11)


def test_zero_shot_only_detectors_export_an_empty_memory_and_refuse_a_k_shot_one():
    from vlmad.methods.base import Detector

    class ZeroShot(Detector):
        name = "zero-shot-only"

        def setup(self, class_name):
            pass

        def predict(self, images):
            raise NotImplementedError

        @property
        def image_size(self):
            return 8

        def info(self):
            raise NotImplementedError

    det = ZeroShot()
    assert det.export_references() == {"shots": 0}
    det.load_references({"shots": 0})
    with pytest.raises(NotImplementedError, match="cannot load a few-shot memory"):
        det.load_references({"shots": 2})
