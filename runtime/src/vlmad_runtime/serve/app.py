"""The FastAPI application of ``vlmad serve`` and ``vlmad-runtime serve``: HTTP API, web page, health, metrics.

``create_app(config, model=...)`` (a :class:`~vlmad_runtime.serve.model.ServedModel`; or ``loader=`` to load it in the
background after start-up) returns an ASGI app; both commands run it with uvicorn (:mod:`.launch`). Routes (all
answers JSON unless noted; errors are ``{"error": {"code", "message", "hint"}, "request_id"}`` with a 4xx/5xx status,
never a stack trace):

- ``POST /v1/detect[?references=SET&heatmap=overlay|raw|color|both|all&alpha=0.5]``: one image as multipart field
  ``image`` (or ``file``), as a raw ``image/*`` body, or as JSON ``{"image_b64": "..."}``.
- ``GET /v1/references``, ``POST|GET|DELETE /v1/references/{set}``: named few-shot reference sets.
- ``GET /v1/info``: model, weights, threshold, limits, warnings.
- ``GET /healthz`` (process up), ``GET /readyz`` (model loaded), ``GET /metrics`` (Prometheus text).
- ``GET /``: the web page; ``/openapi.json``: the API schema (no ``/docs`` page: Swagger UI loads from a CDN,
  blank offline; any OpenAPI viewer reads the schema).

With an API key configured, ``/v1/*`` and ``/metrics`` need ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``;
the health probes, the (data-free) web page shell and the API schema do not.

Layout: :mod:`.config` (ServeConfig), :mod:`.service` (shared state), :mod:`.middleware` (request id, Host/Origin
guard, key, metrics), :mod:`.errors`, :mod:`.bodies` (request parsing), :mod:`.imaging` (decode, heatmaps),
:mod:`.schemas` (OpenAPI), and the routers in :mod:`.routes` (health, detect, references).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from vlmad_runtime.deploy import load_deploy
from vlmad_runtime.serve.config import ServeConfig, deploy_summary, deploy_warnings, service_version
from vlmad_runtime.serve.errors import install_error_handlers
from vlmad_runtime.serve.imaging import render_heatmap
from vlmad_runtime.serve.middleware import ServiceMiddleware
from vlmad_runtime.serve.model import ServedModel
from vlmad_runtime.serve.routes import detect, health, references
from vlmad_runtime.serve.routes.health import STATIC_DIR
from vlmad_runtime.serve.schemas import DetectResponse, Heatmap, ReferenceSetResponse
from vlmad_runtime.serve.service import Service
from vlmad_runtime.serve.worker import ModelWorker


def create_app(
    config: ServeConfig, model: ServedModel | None = None, loader: Callable[[], ServedModel] | None = None
) -> FastAPI:
    """The ASGI app. Pass a ready ``model`` (``prepare`` is called for ``config.class_name``), or a ``loader``
    returning one, run on the model thread after start-up (``/readyz`` answers 503 until it is done)."""
    if (model is None) == (loader is None):
        raise ValueError("pass exactly one of model= or loader=")
    service = Service(config, loader or (lambda: model))
    app = FastAPI(
        title="vlmad serve",
        version=service_version(),
        description="Zero-/few-shot industrial anomaly detection (WinCLIP / APRIL-GAN) over HTTP. Errors are "
        'JSON: {"error": {"code", "message", "hint"}, "request_id"}.',
        lifespan=_lifespan(service),
        docs_url=None,  # Swagger UI / ReDoc pages load their scripts from a CDN: blank offline, and off our CSP
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, service=service)
    if config.allowed_origins:  # outermost: answers the preflights of the allowed pages (no key on a preflight)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST", "DELETE"],
            expose_headers=["X-Request-ID"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    install_error_handlers(app, service.metrics)
    for module in (health, detect, references):
        app.include_router(module.router(service))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _lifespan(service: Service):
    """Start the model worker (it loads the model on its thread) with the app; close it on shutdown."""
    config, limits = service.config, service.config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.decode_slots = asyncio.Semaphore(max(1, limits.max_concurrent_decodes))
        service.worker = ModelWorker(
            service.loader,
            config.class_name,
            service.store,
            service.metrics,
            max_batch_size=config.max_batch_size,
            max_wait_s=config.max_wait_ms / 1000.0,
            max_queue=limits.max_queue,
            memory_cache_bytes=config.memory_cache_bytes,
        )
        service.worker.start()
        try:
            yield
        finally:
            worker, service.worker = service.worker, None
            await run_in_threadpool(worker.close)

    return lifespan


__all__ = [
    "DetectResponse",
    "Heatmap",
    "ReferenceSetResponse",
    "ServeConfig",
    "ServedModel",
    "create_app",
    "deploy_summary",
    "deploy_warnings",
    "load_deploy",
    "render_heatmap",
]
