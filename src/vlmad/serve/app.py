"""The FastAPI application of ``vlmad serve``: HTTP API, web page, health, metrics.

``create_app(config, detector=...)`` (or ``loader=`` to load the model in the background after start-up) returns an
ASGI app; ``vlmad serve`` runs it with uvicorn. Routes (all answers JSON unless noted; errors are
``{"error": {"code", "message", "hint"}, "request_id"}`` with a 4xx/5xx status, never a stack trace):

- ``POST /v1/detect[?references=SET&heatmap=overlay|raw|color|both|all&alpha=0.5]``: one image as multipart field
  ``image`` (or ``file``), as a raw ``image/*`` body, or as JSON ``{"image_b64": "..."}``.
- ``GET /v1/references``, ``POST|GET|DELETE /v1/references/{set}``: named few-shot reference sets.
- ``GET /v1/info``: model, weights, threshold, limits, warnings.
- ``GET /healthz`` (process up), ``GET /readyz`` (model loaded), ``GET /metrics`` (Prometheus text).
- ``GET /``: the web page; ``/openapi.json`` and ``/docs``: the API schema.

With an API key configured, ``/v1/*`` and ``/metrics`` need ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``;
the health probes, the (data-free) web page shell and the API schema do not.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vlmad.serve.batching import BatcherClosedError, QueueFullError
from vlmad.serve.limits import (
    ApiError,
    Limits,
    Part,
    check_file_part,
    decode_base64,
    decode_image,
    media_type,
    parse_multipart,
    validate_set_name,
)
from vlmad.serve.metrics import ServiceMetrics
from vlmad.serve.references import ReferenceStore
from vlmad.serve.worker import DetectResult, ModelWorker
from vlmad_runtime.deploy import load_deploy
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP, colorize, overlay_heatmap

log = logging.getLogger("vlmad.serve")

STATIC_DIR = Path(__file__).parent / "static"
HEATMAP_KINDS = ("overlay", "raw", "color")
HEATMAP_ALIASES = {"none": (), "": (), "both": ("overlay", "raw"), "all": HEATMAP_KINDS}
DETECT_FIELDS = ("image", "file")
REFERENCE_FIELDS = ("images", "image", "file")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class ServeConfig:
    """Everything ``vlmad serve`` passes to the app besides the detector."""

    class_name: str
    data_dir: Path
    threshold: float | None = None
    deploy: dict[str, Any] | None = None  # the deploy.json content (for mismatch warnings)
    deploy_path: str | None = None
    api_key: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    limits: Limits = field(default_factory=Limits)
    memory_cache_bytes: int = 1 << 30


def deploy_warnings(deploy: dict[str, Any] | None, info: dict[str, Any], class_name: str) -> list[str]:
    """Where the calibrated threshold was computed for something other than what is served."""
    if not deploy:
        return []
    out = []

    def base(method: Any) -> str:
        return str(method or "").rstrip("+")

    if deploy.get("method") is not None and base(deploy["method"]) != base(info.get("method")):
        out.append(f"deploy.json threshold was calibrated for method {deploy['method']!r}, "
                   f"but this server runs {base(info.get('method'))!r}")
    if deploy.get("class_name") is not None and str(deploy["class_name"]) != class_name:
        out.append(f"deploy.json threshold was calibrated for class {deploy['class_name']!r}, "
                   f"but this server scores {class_name!r}")
    det = deploy.get("detector") if isinstance(deploy.get("detector"), dict) else {}
    for key in ("model", "weights_id", "prompt_set"):
        if det.get(key) is not None and info.get(key) is not None and str(det[key]) != str(info[key]):
            out.append(f"deploy.json threshold was calibrated with {key} {det[key]!r}, but this server uses "
                       f"{info[key]!r}")
    shots = det.get("shots")
    if isinstance(shots, int) and shots > 0:
        out.append(f"deploy.json threshold was calibrated in {shots}-shot mode with specific reference images: its "
                   "decisions only hold for requests that use a reference set of those images")
    return out


def deploy_summary(config: ServeConfig) -> dict[str, Any] | None:
    if config.deploy is None:
        return None
    d = config.deploy
    cal = d.get("calibration") if isinstance(d.get("calibration"), dict) else {}
    return {"path": config.deploy_path, "threshold": config.threshold, "method": d.get("method"),
            "class_name": d.get("class_name"), "expected_false_alarm_rate": d.get("expected_false_alarm_rate"),
            "calibration_mode": cal.get("mode"), "created": d.get("created")}


# ---------------------------------------------------------------------------------------------- schema (OpenAPI)
class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. invalid_image, unknown_reference_set.")
    message: str = Field(description="What was wrong.")
    hint: str | None = Field(None, description="What to do about it.")


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class RawMap(BaseModel):
    shape: list[int] = Field(description="[H, W] at the model input resolution.")
    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    data_b64: str = Field(description="base64 of the row-major float32 array.")


class Heatmap(BaseModel):
    min: float
    max: float
    size: list[int] = Field(description="[W, H] of the anomaly map (model input resolution).")
    overlay_png_b64: str | None = Field(None, description="PNG: colour map blended over the image (alpha).")
    overlay_size: list[int] | None = Field(None, description="[W, H] of the overlay PNG (original size, capped).")
    alpha: float | None = None
    color_png_b64: str | None = Field(None, description="PNG: the colour map alone at model resolution "
                                                        "(min-max scaled, jet), for client-side blending.")
    raw: RawMap | None = None


class ImageMeta(BaseModel):
    width: int
    height: int
    format: str | None = None
    filename: str | None = None


class DetectResponse(BaseModel):
    score: float = Field(description="Image anomaly score, higher = more anomalous.")
    decision: Literal["anomalous", "normal"] | None = Field(
        None, description="score >= threshold -> anomalous; null when no threshold is configured (--deploy).")
    threshold: float | None = None
    class_name: str
    method: str
    model: str
    weights_id: str
    shots: int
    references: str | None = None
    reference_version: str | None = None
    random_weights: bool
    warning: str | None = Field(None, description="Set when scores cannot be trusted (random weights).")
    image: ImageMeta
    timing_ms: dict[str, float] = Field(description="read, decode, queue, inference (whole batch), "
                                                    "postprocess, total.")
    batch_size: int = Field(description="Images in the model forward this request was part of.")
    heatmap: Heatmap | None = None
    request_id: str | None = None


class ReferenceSetResponse(BaseModel):
    name: str
    version: str
    created: str
    count: int
    bytes: int
    images: list[dict[str, Any]]
    memory_cached: bool = Field(False, description="The detector memory for this version is computed.")
    shots: int | None = None
    fit_ms: float | None = None


class ReferenceSetList(BaseModel):
    sets: list[ReferenceSetResponse]


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422, 503, 504)}

_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
DETECT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": _IMAGE_SCHEMA}}},
    "application/json": {"schema": {"type": "object", "required": ["image_b64"], "properties": {
        "image_b64": {"type": "string", "description": "base64 image file bytes (or a data: URL)"},
        "filename": {"type": "string"}}}},
    "image/png": {"schema": _IMAGE_SCHEMA}, "image/jpeg": {"schema": _IMAGE_SCHEMA},
}}}
REFERENCE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": _IMAGE_SCHEMA}}}},
    "application/json": {"schema": {"type": "object", "required": ["images_b64"], "properties": {
        "images_b64": {"type": "array", "items": {"type": "string"}}}}},
}}}


# ---------------------------------------------------------------------------------------------- helpers
def error_response(err: ApiError, request_id: str | None) -> JSONResponse:
    headers = {"X-Request-ID": request_id or "", **err.headers}
    return JSONResponse(err.body(request_id), status_code=err.status, headers=headers)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def parse_heatmap(value: str) -> tuple[str, ...]:
    kinds: list[str] = []
    for item in (value or "").lower().split(","):
        item = item.strip()
        if item in HEATMAP_ALIASES:
            kinds.extend(HEATMAP_ALIASES[item])
        elif item in HEATMAP_KINDS:
            kinds.append(item)
        else:
            raise ApiError(400, "invalid_query", f"unknown heatmap kind {item!r}",
                           "use heatmap=none|overlay|raw|color|both|all, or a comma-separated list")
    return tuple(dict.fromkeys(kinds))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (never buffered beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "invalid_content_length", f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise ApiError(413, "request_too_large", f"request body is {n} bytes; the limit is {limit} bytes",
                           "send a smaller image (or fewer images per request)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "request_too_large", f"request body exceeds the limit of {limit} bytes",
                               "send a smaller image (or fewer images per request)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"JSON body must be an object, got {type(data).__name__}")
    return data


def _unsupported_content_type(ctype: str, accepted: str) -> ApiError:
    if not ctype:
        return ApiError(415, "missing_content_type", "request has no Content-Type header", f"send {accepted}")
    return ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not accepted here", f"send {accepted}")


def extract_detect_image(content_type: str, body: bytes, limits: Limits) -> tuple[bytes, str | None]:
    """The one image of a detect request (bytes, client file name)."""
    ctype = media_type(content_type)
    accepted = ("multipart/form-data with an 'image' file field, application/json {\"image_b64\": ...}, "
                "or a raw image/* body")
    if ctype == "multipart/form-data":
        parts = parse_multipart(body, content_type, max_parts=16)
        files = [p for p in parts if p.name in DETECT_FIELDS]
        if not files:
            got = ", ".join(repr(p.name) for p in parts) or "none"
            raise ApiError(400, "missing_field", f"multipart body has no 'image' field (fields sent: {got})",
                           "send the image as form field 'image', e.g. curl -F image=@part.png")
        if len(files) > 1:
            raise ApiError(400, "too_many_images", f"got {len(files)} images; /v1/detect scores one image per "
                           "request", "send one request per image (the server batches concurrent requests)")
        check_file_part(files[0])
        return files[0].data, files[0].filename
    if ctype == "application/json":
        data = _json_body(body)
        unknown = sorted(set(data) - {"image_b64", "image", "filename"})
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown JSON field(s): {', '.join(unknown)}",
                           "send {\"image_b64\": \"<base64>\", \"filename\": optional}; references and heatmap "
                           "are query parameters")
        key = "image_b64" if "image_b64" in data else "image" if "image" in data else None
        if key is None:
            raise ApiError(400, "missing_field", "JSON body has no 'image_b64' field",
                           "send {\"image_b64\": \"<base64 of the image file>\"}")
        filename = data.get("filename")
        return decode_base64(data[key], key, limits), filename if isinstance(filename, str) else None
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return body, None
    raise _unsupported_content_type(ctype, accepted)


def extract_reference_images(content_type: str, body: bytes, limits: Limits) -> list[tuple[bytes, str | None]]:
    ctype = media_type(content_type)
    n_max = limits.max_reference_images
    if ctype == "multipart/form-data":
        parts: list[Part] = parse_multipart(body, content_type, max_parts=n_max + 8)
        files = [p for p in parts if p.name in REFERENCE_FIELDS]
        if not files:
            got = ", ".join(repr(p.name) for p in parts) or "none"
            raise ApiError(400, "missing_field", f"multipart body has no 'images' field (fields sent: {got})",
                           "send each normal image as a form field 'images', e.g. -F images=@good1.png "
                           "-F images=@good2.png")
        for p in files:
            check_file_part(p)
        items = [(p.data, p.filename) for p in files]
    elif ctype == "application/json":
        data = _json_body(body)
        unknown = sorted(set(data) - {"images_b64", "images", "filenames"})
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown JSON field(s): {', '.join(unknown)}",
                           "send {\"images_b64\": [\"<base64>\", ...]}")
        key = "images_b64" if "images_b64" in data else "images" if "images" in data else None
        if key is None:
            raise ApiError(400, "missing_field", "JSON body has no 'images_b64' field",
                           "send {\"images_b64\": [\"<base64 of image 1>\", ...]}")
        values = data[key]
        if not isinstance(values, list):
            raise ApiError(400, "invalid_field", f"field {key!r} must be a list of base64 strings")
        if len(values) > n_max:
            raise ApiError(400, "too_many_images", f"got {len(values)} images; a reference set holds at most {n_max}")
        names = data.get("filenames") if isinstance(data.get("filenames"), list) else []
        items = [(decode_base64(v, f"{key}[{i}]", limits), names[i] if i < len(names) and isinstance(names[i], str)
                  else None) for i, v in enumerate(values)]
    else:
        raise _unsupported_content_type(
            ctype, "multipart/form-data with one or more 'images' file fields, or application/json "
            "{\"images_b64\": [...]}")
    if not items:
        raise ApiError(400, "no_images", "a reference set needs at least one image")
    if len(items) > n_max:
        raise ApiError(400, "too_many_images", f"got {len(items)} images; a reference set holds at most {n_max}",
                       "K-shot references are a handful of normal images (typically 1-8)")
    return items


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_heatmap(result: DetectResult, image: Image.Image, kinds: tuple[str, ...], alpha: float,
                   limits: Limits, stamp: str | None) -> dict[str, Any]:
    amap = result.anomaly_map
    finite = amap[np.isfinite(amap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    amap = np.nan_to_num(amap, nan=lo, posinf=hi, neginf=lo)
    out: dict[str, Any] = {"min": lo, "max": hi, "size": [int(amap.shape[1]), int(amap.shape[0])],
                           "overlay_png_b64": None, "overlay_size": None, "alpha": None, "color_png_b64": None,
                           "raw": None}
    if "overlay" in kinds:
        base = image
        side = max(image.size)
        if side > limits.overlay_max_side:
            scale = limits.overlay_max_side / side
            base = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                Image.BILINEAR)
        over = overlay_heatmap(base, amap, alpha=alpha, stamp=stamp)
        out.update(overlay_png_b64=_png_b64(over), overlay_size=list(over.size), alpha=alpha)
    if "color" in kinds:
        out["color_png_b64"] = _png_b64(Image.fromarray(colorize(amap)))
    if "raw" in kinds:
        arr = np.ascontiguousarray(amap, dtype="<f4")
        out["raw"] = {"shape": [int(arr.shape[0]), int(arr.shape[1])], "dtype": "float32", "byte_order": "little",
                      "data_b64": base64.b64encode(arr.tobytes()).decode("ascii")}
    return out


# ---------------------------------------------------------------------------------------------- middleware
class ServiceMiddleware:
    """Request id, API key, metrics by route template, and a last-resort JSON 500 (no stack trace leaves)."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service

    def _needs_key(self, path: str) -> bool:
        return bool(self.service.config.api_key) and (path.startswith("/v1/") or path == "/v1"
                                                      or path == "/metrics")

    def _authorized(self, scope) -> bool:
        expected = self.service.config.api_key.encode()
        given = None
        for name, value in scope.get("headers", []):
            if name == b"x-api-key":
                given = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        return given is not None and hmac.compare_digest(given, expected)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status: dict[str, Any] = {"code": None}
        path = scope.get("path", "")
        metrics = self.service.metrics

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Content-Type-Options"] = "nosniff"
                if path == "/" or path.startswith("/static/"):
                    headers["Content-Security-Policy"] = PAGE_CSP
                metrics.latency.observe(time.perf_counter() - start, route=_route_of(scope, path))
            await send(message)

        try:
            if self._needs_key(path) and not self._authorized(scope):
                err = ApiError(401, "unauthorized", "missing or wrong API key",
                               "send the key as header 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                               headers={"WWW-Authenticate": "Bearer"})
                metrics.errors.inc(code=err.code)
                await error_response(err, request_id)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in request %s %s (request id %s)", scope.get("method"), path, request_id)
            if status["code"] is None:
                err = ApiError(500, "internal_error", "internal server error",
                               f"report request id {request_id}; the server log has the details")
                metrics.errors.inc(code=err.code)
                await error_response(err, request_id)(scope, receive, send_wrapper)
        finally:
            metrics.requests.inc(route=_route_of(scope, path), method=scope.get("method", ""),
                                 status=str(status["code"] or 500))


def _route_of(scope, path: str) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    return "/static" if path.startswith("/static/") else "unmatched"


# ---------------------------------------------------------------------------------------------- the service
class Service:
    """State shared by the routes: config, store, metrics and (while running) the model worker."""

    def __init__(self, config: ServeConfig, loader: Callable[[], Any]) -> None:
        self.config = config
        self.loader = loader
        self.metrics = ServiceMetrics()
        self.store = ReferenceStore(config.data_dir, max_sets=config.limits.max_reference_sets)
        self.worker: ModelWorker | None = None
        self.decode_slots: asyncio.Semaphore | None = None
        self.started = time.time()
        self.metrics.add_gauge("vlmad_model_ready", "1 when the model is loaded.",
                               lambda: float(self.ready))
        self.metrics.add_gauge("vlmad_queue_depth", "Detect requests waiting for the model worker.",
                               lambda: float(self.worker.batcher.depth if self.worker else 0))
        self.metrics.add_gauge("vlmad_reference_sets", "Reference sets on disk.", lambda: float(len(self.store)))
        self.metrics.add_gauge("vlmad_reference_memories_cached", "Reference memories held by the worker.",
                               lambda: float(len(self.worker.memories) if self.worker else 0))

    @property
    def ready(self) -> bool:
        return self.worker is not None and self.worker.ready.is_set()

    def stalled_for(self) -> float | None:
        """Seconds the current model batch has been running, when that is far beyond the request timeout."""
        busy = self.worker.batcher.busy_for() if self.worker is not None else None
        limit = max(60.0, 10.0 * self.config.limits.request_timeout_s)
        return busy if busy is not None and busy > limit else None

    def require_worker(self) -> ModelWorker:
        w = self.worker
        if w is None or not w.ready.is_set():
            if w is not None and w.load_error:
                raise ApiError(503, "model_failed", f"the model failed to load: {w.load_error}",
                               "see the server log; fix the weights options and restart")
            raise ApiError(503, "model_loading", "the model is still loading", "retry in a few seconds",
                           headers={"Retry-After": "5"})
        return w

    @property
    def random_weights(self) -> bool:
        return bool(self.worker and self.worker.info.get("random_weights"))

    def warnings(self) -> list[str]:
        out = []
        if self.random_weights:
            out.append(RANDOM_WEIGHTS_STAMP)
        if self.worker and self.worker.info:
            out.extend(deploy_warnings(self.config.deploy, self.worker.info, self.config.class_name))
        out.extend(f"unreadable reference set file {p}" for p in self.store.problems)
        return out

    async def decode(self, data: bytes, label: str, preprocess: Callable[[Image.Image], Any] | None = None
                     ) -> tuple[Image.Image, str, Any]:
        """Decode (and optionally preprocess) off the event loop, at most ``max_concurrent_decodes`` at a time."""
        assert self.decode_slots is not None

        def work() -> tuple[Image.Image, str, Any]:
            image, fmt = decode_image(data, self.config.limits, label)
            return image, fmt, preprocess(image) if preprocess is not None else None

        async with self.decode_slots:
            return await run_in_threadpool(work)

    def set_response(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        info = self.store.get(name)
        out = info.as_dict()
        out["memory_cached"] = bool(self.worker and (name, info.version) in self.worker.memories)
        out.update(extra or {})
        return out


def create_app(config: ServeConfig, detector: Any = None, loader: Callable[[], Any] | None = None) -> FastAPI:
    """The ASGI app. Pass a ready ``detector`` (``setup`` is called for ``config.class_name`` if needed), or a
    ``loader`` returning one, run on the model thread after start-up (``/readyz`` answers 503 until it is done)."""
    if (detector is None) == (loader is None):
        raise ValueError("pass exactly one of detector= or loader=")
    service = Service(config, loader or (lambda: detector))
    limits = config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.decode_slots = asyncio.Semaphore(max(1, limits.max_concurrent_decodes))
        service.worker = ModelWorker(service.loader, config.class_name, service.store, service.metrics,
                                     max_batch_size=config.max_batch_size, max_wait_s=config.max_wait_ms / 1000.0,
                                     max_queue=limits.max_queue, memory_cache_bytes=config.memory_cache_bytes)
        service.worker.start()
        try:
            yield
        finally:
            worker, service.worker = service.worker, None
            await run_in_threadpool(worker.close)

    app = FastAPI(
        title="vlmad serve",
        version=_version(),
        description="Zero-/few-shot industrial anomaly detection (WinCLIP / APRIL-GAN) over HTTP. Errors are "
                    "JSON: {\"error\": {\"code\", \"message\", \"hint\"}, \"request_id\"}.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, service=service)

    # ------------------------------------------------------------------ error handlers
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        service.metrics.errors.inc(code=err.code)
        return error_response(err, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        api = ApiError(422, "invalid_parameter", f"invalid request parameter(s): {problems}",
                       "see /openapi.json for the accepted parameters")
        service.metrics.errors.inc(code=api.code)
        return error_response(api, _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, f"http_{err.status_code}")
        hint = "see /openapi.json for the routes" if err.status_code in (404, 405) else None
        api = ApiError(err.status_code, code, str(err.detail), hint, headers=dict(err.headers or {}))
        service.metrics.errors.inc(code=api.code)
        return error_response(api, _request_id(request))

    # ------------------------------------------------------------------ health, metrics, page
    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the model is loaded.",
             responses={503: {"description": "model loading or failed"}})
    async def readyz():
        stalled = service.stalled_for()
        if stalled is not None:
            return JSONResponse({"status": "stalled", "error": f"the model worker has been busy with one batch for "
                                 f"{stalled:.0f} s"}, status_code=503)
        if service.ready:
            return {"status": "ready", "model": service.worker.info.get("model"),
                    "weights_id": service.worker.info.get("weights_id")}
        w = service.worker
        if w is not None and w.load_error:
            return JSONResponse({"status": "failed", "error": w.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             summary="Prometheus metrics (text format 0.0.4).")
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------ API
    @app.get("/v1/info", tags=["api"], summary="Model, weights, threshold, limits and warnings.")
    async def info():
        w = service.worker
        return {
            "ready": service.ready,
            "class_name": config.class_name,
            "detector": dict(w.info) if w and w.info else None,
            "random_weights": service.random_weights,
            "warning": RANDOM_WEIGHTS_STAMP if service.random_weights else None,
            "warnings": service.warnings(),
            "threshold": config.threshold,
            "deploy": deploy_summary(config),
            "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms},
            "limits": limits.as_dict(),
            "reference_sets": service.store.names(),
            "api_key_required": bool(config.api_key),
            "version": _version(),
        }

    @app.post("/v1/detect", tags=["api"], response_model=DetectResponse, response_model_exclude_none=False,
              responses=ERRORS, openapi_extra=DETECT_BODY,
              summary="Score one image; optional heatmap and few-shot reference set.")
    async def detect(
        request: Request,
        references: str | None = Query(None, description="Name of a reference set (few-shot); omit for "
                                                          "zero-shot."),
        heatmap: str = Query("none", description="none | overlay | raw | color | both (overlay+raw) | all, or a "
                                                 "comma-separated list."),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="Overlay opacity of the heatmap."),
    ):
        t0 = time.perf_counter()
        kinds = parse_heatmap(heatmap)
        key = None
        if references:
            ref = service.store.get(references)  # 400 bad name / 404 unknown, before reading the body
            key = (ref.name, ref.version)
        worker = service.require_worker()
        if worker.batcher.depth >= limits.max_queue:  # refuse before reading and decoding the upload
            raise _overloaded(limits)

        async def run() -> JSONResponse:
            body = await read_body(request, limits.max_detect_request_bytes)
            t_read = time.perf_counter()
            data, filename = extract_detect_image(request.headers.get("content-type", ""), body, limits)
            del body
            image, fmt, model_input = await service.decode(data, "image", worker.preprocess)
            t_decode = time.perf_counter()
            try:
                result = await worker.detect(model_input, key)
            except QueueFullError:
                raise _overloaded(limits) from None
            except BatcherClosedError:
                raise ApiError(503, "shutting_down", "the server is shutting down", "retry on another replica"
                               ) from None
            t_model = time.perf_counter()
            if not np.isfinite(result.score):
                raise ApiError(500, "non_finite_score", "the model produced a non-finite score for this image",
                               "report it with the image; the weights may be broken")
            stamp = RANDOM_WEIGHTS_STAMP if result.info.get("random_weights") else None
            hm = (await run_in_threadpool(render_heatmap, result, image, kinds, alpha, limits, stamp)
                  if kinds else None)
            t_end = time.perf_counter()
            threshold = config.threshold
            decision = None if threshold is None else ("anomalous" if result.score >= threshold else "normal")
            inf = result.info
            return JSONResponse({  # built here, not re-validated by the response model (which documents it)
                "score": result.score, "decision": decision, "threshold": threshold,
                "class_name": config.class_name, "method": inf.get("method"), "model": inf.get("model"),
                "weights_id": inf.get("weights_id"), "shots": int(inf.get("shots") or 0),
                "references": key[0] if key else None,
                "reference_version": result.reference_version if key else None,
                "random_weights": bool(inf.get("random_weights")), "warning": stamp,
                "image": {"width": image.width, "height": image.height, "format": fmt,
                          "filename": (filename or None) and filename[:200]},
                "timing_ms": {
                    "read": _ms(t_read - t0), "decode": _ms(t_decode - t_read), "queue": _ms(result.queue_s),
                    "inference": _ms(result.inference_s),
                    "postprocess": _ms(t_end - t_model), "total": _ms(t_end - t0),
                },
                "batch_size": result.batch_size, "heatmap": hm, "request_id": _request_id(request),
            })

        return await _with_timeout(run(), limits.request_timeout_s)

    @app.get("/v1/references", tags=["references"], response_model=ReferenceSetList, responses=ERRORS,
             summary="List reference sets.")
    async def list_references():
        return {"sets": [service.set_response(i.name) for i in service.store.list()]}

    @app.get("/v1/references/{name}", tags=["references"], response_model=ReferenceSetResponse, responses=ERRORS,
             summary="One reference set.")
    async def get_reference(name: str):
        return service.set_response(validate_set_name(name))

    @app.post("/v1/references/{name}", tags=["references"], response_model=ReferenceSetResponse,
              responses=ERRORS, openapi_extra=REFERENCE_BODY, status_code=201,
              summary="Create (or with replace=true overwrite) a reference set from K normal images.")
    async def put_reference(
        request: Request, name: str,
        replace: bool = Query(False, description="Overwrite an existing set of this name."),
    ):
        validate_set_name(name)
        if not replace and name in service.store.names():
            raise ApiError(409, "reference_set_exists", f"reference set {name!r} already exists",
                           "DELETE it first, or POST with ?replace=true to overwrite it")

        async def run():
            body = await read_body(request, limits.max_reference_request_bytes)
            items = extract_reference_images(request.headers.get("content-type", ""), body, limits)
            del body
            images = [(await service.decode(data, f"images[{i}]" + (f" ({fn[:100]})" if fn else "")))[0]
                      for i, (data, fn) in enumerate(items)]
            info, created = await run_in_threadpool(service.store.put, name, images, [fn for _, fn in items],
                                                    replace)
            extra: dict[str, Any] = {}
            worker = service.worker
            if worker is not None:
                worker.forget(name)
                if worker.ready.is_set():
                    t = time.perf_counter()
                    mem = await worker.warm(name)
                    extra = {"shots": mem.shots, "fit_ms": _ms(time.perf_counter() - t)}
            return JSONResponse(service.set_response(name, extra), status_code=201 if created else 200)

        return await _with_timeout(run(), limits.request_timeout_s * 4)

    @app.delete("/v1/references/{name}", tags=["references"], responses=ERRORS, summary="Delete a reference set.")
    async def delete_reference(name: str):
        info = await run_in_threadpool(service.store.delete, name)
        if service.worker is not None:
            service.worker.forget(name)
        return {"deleted": info.name, "version": info.version}

    return app


def _overloaded(limits: Limits) -> ApiError:
    return ApiError(503, "overloaded", f"{limits.max_queue} requests are already waiting for the model",
                    "retry later, or run more replicas", headers={"Retry-After": "1"})


async def _with_timeout(coro, timeout_s: float):
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"the request did not finish within {timeout_s:g} s",
                       "the server is overloaded or the upload too slow; retry later") from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _version() -> str:
    from vlmad_runtime.version import __version__

    return __version__


__all__ = ["ServeConfig", "create_app", "deploy_warnings", "load_deploy"]
