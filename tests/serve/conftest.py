"""Fixtures of the service tests: tiny detectors (session text cache), apps on a temp data dir, test images."""

from __future__ import annotations

import importlib
import io
import os
import struct
import time
import zlib
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

#: the import names of the ``serve`` extra (fastapi, uvicorn, python-multipart, httpx)
SERVE_EXTRA_MODULES = ("fastapi", "uvicorn", "multipart", "httpx")


def _missing_serve_modules() -> list[str]:
    missing = []
    for name in SERVE_EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


# The service tests skip (pytest.importorskip) where the serve extra is not installed, which is right on a
# minimal install but would let CI pass with the whole service untested. VLMAD_REQUIRE_SERVE=1 (set by .ci/run)
# makes a missing module stop the run instead, before any of these tests can skip.
if os.environ.get("VLMAD_REQUIRE_SERVE") == "1" and (_missing := _missing_serve_modules()):
    raise pytest.UsageError(
        f"VLMAD_REQUIRE_SERVE=1 but the serve extra is not importable (missing: {', '.join(_missing)}); "
        "install it with `pip install -e '.[serve]'` (make setup does)"
    )


@pytest.fixture(scope="session")
def serve_text_cache(tmp_path_factory):
    """One text-embedding cache for all service tests (set-up of the tiny model is then instant)."""
    return tmp_path_factory.mktemp("serve-text-cache")


@pytest.fixture(scope="session")
def make_detector(weights_file, serve_text_cache):
    """Factory of fresh tiny detectors: ``make_detector()`` (discriminative checkpoint), ``random=True`` (random
    init, flagged as such), ``method="aprilgan"`` (untrained heads, 4-layer tiny ViT)."""
    from vlmad.backbones import ClipBackbone
    from vlmad.backbones.text_cache import TextEmbeddingCache

    def make(method: str = "winclip", random: bool = False, batch_size: int = 8):
        cache = TextEmbeddingCache(root=serve_text_cache)
        if method == "winclip":
            from vlmad.methods.winclip import WinClip

            bb = (
                ClipBackbone.load("vlmad-tiny-vit", random_weights=True)
                if random
                else ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")))
            )
            return WinClip(bb, cache=cache, batch_size=batch_size)
        from vlmad.methods.aprilgan import AprilGan

        bb = ClipBackbone.load("vlmad-tiny-vit-4l", random_weights=True)
        return AprilGan(bb, allow_untrained=True, cache=cache, batch_size=batch_size)

    return make


def png_bytes(seed: int = 0, size: tuple[int, int] = (80, 60), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width x height`` (8-bit gray) with a tiny IDAT: a 'bomb' header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@contextmanager
def running_client(app, ready: bool = True, timeout: float = 60.0):
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
        if ready:
            deadline = time.monotonic() + timeout
            while client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not ready: {client.get('/readyz').json()}")
                time.sleep(0.05)
        yield client


@pytest.fixture
def serve_helpers():
    return SimpleNamespace(png=png_bytes, bomb=png_header_only, client=running_client)


@pytest.fixture
def make_app(tmp_path, make_detector):
    """``make_app(detector=None, data_dir=None, **config_fields)`` -> app (default: a fresh tiny WinCLIP)."""
    from vlmad.serve import ServeConfig, create_app
    from vlmad_runtime.serve.limits import Limits

    def make(detector=None, data_dir=None, limits: Limits | None = None, loader=None, **fields):
        config = ServeConfig(
            class_name=fields.pop("class_name", "bottle"),
            data_dir=data_dir or tmp_path / "data",
            limits=limits or Limits(),
            **fields,
        )
        if loader is not None:
            return create_app(config, loader=loader)
        return create_app(config, detector=detector if detector is not None else make_detector())

    return make


@pytest.fixture(scope="session")
def tiny_bundle(make_detector, tmp_path_factory):
    """A 2-shot tiny WinCLIP (discriminative checkpoint) exported to an ONNX bundle for class "bottle":
    ``(bundle folder, the torch detector it was exported from)``."""
    from vlmad.export.build import ExportRequest, export_bundle
    from vlmad.fingerprint import image_digest, reference_fingerprint

    det = make_detector()
    det.setup("bottle")
    refs = [Image.open(io.BytesIO(png_bytes(70 + i, (64, 64)))).convert("RGB") for i in range(2)]
    det.fit(refs)
    folder = tmp_path_factory.mktemp("bundle") / "bottle"
    verify = det.preprocess([Image.open(io.BytesIO(png_bytes(3, (80, 60)))).convert("RGB")])
    ref_fp = reference_fingerprint(image_digest(im) for im in refs)
    export_bundle(
        det, ExportRequest(out=folder, format="onnx", verify=verify, class_name="bottle", reference_fingerprint=ref_fp)
    )
    return folder, det


@pytest.fixture
def make_bundle_app(tiny_bundle, tmp_path):
    """``make_bundle_app(**config_fields)`` -> the service app on :func:`tiny_bundle`, as `vlmad-runtime serve`
    builds it (references refused)."""
    from vlmad_runtime.bundle import load_bundle
    from vlmad_runtime.serve import ServeConfig, create_app
    from vlmad_runtime.serve.bundle_model import BundleModel
    from vlmad_runtime.serve.launch import BAKED_IN

    def make(**fields):
        model = BundleModel(load_bundle(tiny_bundle[0]), BAKED_IN)
        config = ServeConfig(
            class_name=model.class_name, data_dir=tmp_path / "data", references_refusal=BAKED_IN, **fields
        )
        return create_app(config, model=model)

    return make
