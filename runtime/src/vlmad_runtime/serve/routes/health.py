"""Probes, metrics, the web page and ``/v1/info``: everything that reads the service's state without changing it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.serve.config import deploy_summary, service_version
from vlmad_runtime.serve.service import Service

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def router(service: Service) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz():
        return {"status": "ok"}

    @r.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the model is loaded.",
        responses={503: {"description": "model loading or failed"}},
    )
    async def readyz():
        stalled = service.stalled_for()
        if stalled is not None:
            return JSONResponse(
                {"status": "stalled", "error": f"the model worker has been busy with one batch for {stalled:.0f} s"},
                status_code=503,
            )
        if service.ready:
            return {
                "status": "ready",
                "model": service.worker.info.get("model"),
                "weights_id": service.worker.info.get("weights_id"),
            }
        w = service.worker
        if w is not None and w.load_error:
            return JSONResponse({"status": "failed", "error": w.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @r.get(
        "/metrics", tags=["health"], response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)."
    )
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @r.get("/", include_in_schema=False)
    async def index():
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"}
        )

    @r.get("/v1/info", tags=["api"], summary="Model, weights, threshold, limits and warnings.")
    async def info():
        return service_info(service)

    return r


def service_info(service: Service) -> dict:
    """What ``GET /v1/info`` answers."""
    config, w = service.config, service.worker
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
        "limits": config.limits.as_dict(),
        "reference_sets": service.store.names(),
        "references_supported": not config.references_refusal,
        "api_key_required": bool(config.api_key),
        "version": service_version(),
    }
