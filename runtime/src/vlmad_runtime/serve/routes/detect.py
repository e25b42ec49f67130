"""``POST /v1/detect``: one image in, score (and decision, heatmap) out, through the shared dynamic batcher."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.serve.batching import BatcherClosedError, QueueFullError
from vlmad_runtime.serve.bodies import extract_detect_image, parse_heatmap, read_body
from vlmad_runtime.serve.config import decide, map_scale
from vlmad_runtime.serve.errors import overloaded, request_id_of, with_timeout
from vlmad_runtime.serve.imaging import DecodedUpload, prepare_detect_image, render_heatmap
from vlmad_runtime.serve.limits import ApiError
from vlmad_runtime.serve.schemas import DETECT_BODY, ERRORS, DetectResponse
from vlmad_runtime.serve.service import Service, ms
from vlmad_runtime.serve.worker import DetectResult, ModelWorker


def router(service: Service) -> APIRouter:
    r = APIRouter()
    limits = service.config.limits

    @r.post(
        "/v1/detect",
        tags=["api"],
        response_model=DetectResponse,
        response_model_exclude_none=False,
        responses=ERRORS,
        openapi_extra=DETECT_BODY,
        summary="Score one image; optional heatmap and few-shot reference set.",
    )
    async def detect(
        request: Request,
        references: str | None = Query(None, description="Name of a reference set (few-shot); omit for zero-shot."),
        heatmap: str = Query(
            "none", description="none | overlay | raw | color | both (overlay+raw) | all, or a comma-separated list."
        ),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="Overlay opacity of the heatmap."),
        mask: bool = Query(
            False,
            description="Also return the defect mask and its contour (needs a deploy file with a pixel threshold).",
        ),
    ):
        t0 = time.perf_counter()
        kinds = parse_heatmap(heatmap)
        key = None
        if references:
            service.require_references()
            ref = service.store.get(references)  # 400 bad name / 404 unknown, before reading the body
            key = (ref.name, ref.version)
        worker = service.require_worker()
        if worker.batcher.depth >= limits.max_queue:  # refuse before reading and decoding the upload
            raise overloaded(limits)
        return await with_timeout(
            _detect(service, worker, request, key, kinds, alpha, t0, mask), limits.request_timeout_s
        )

    return r


async def _read_and_decode(
    service: Service, worker: ModelWorker, request: Request, kinds: tuple[str, ...]
) -> tuple[DecodedUpload, str | None, float]:
    """Body -> decoded upload (model input, size, overlay copy); the body's bytes count against the service-wide
    budget until decoded. Returns (upload, client file name, time the body was read)."""
    limits = service.config.limits
    hold = service.bodies.hold()
    try:
        body = await read_body(request, limits.max_detect_request_bytes, hold)
        t_read = time.perf_counter()
        data, filename = extract_detect_image(request.headers.get("content-type", ""), body, limits)
        del body
        up = await service.run_decode(
            partial(prepare_detect_image, data, limits, worker.preprocess, "overlay" in kinds)
        )
        del data
    finally:
        hold.release()
    return up, filename, t_read


async def _detect(
    service: Service,
    worker: ModelWorker,
    request: Request,
    key: tuple[str, str] | None,
    kinds: tuple[str, ...],
    alpha: float,
    t0: float,
    mask: bool = False,
) -> JSONResponse:
    limits = service.config.limits
    up, filename, t_read = await _read_and_decode(service, worker, request, kinds)
    t_decode = time.perf_counter()
    try:
        result = await worker.detect(up.model_input, key)
    except QueueFullError:
        raise overloaded(limits) from None
    except BatcherClosedError:
        raise ApiError(503, "shutting_down", "the server is shutting down", "retry on another replica") from None
    t_model = time.perf_counter()
    if not np.isfinite(result.score):
        raise ApiError(
            500,
            "non_finite_score",
            "the model produced a non-finite score for this image",
            "report it with the image; the weights may be broken",
        )
    stamp = RANDOM_WEIGHTS_STAMP if result.info.get("random_weights") else None
    scale, pixel_threshold = map_scale(service.config)
    hm = (
        await run_in_threadpool(
            render_heatmap, result, up.overlay_base, kinds, alpha, limits, stamp, scale, pixel_threshold, mask
        )
        if kinds or mask
        else None
    )
    ref_fp = await service.reference_fingerprint(key, result.reference_version)
    t_end = time.perf_counter()
    timing = {
        "read": ms(t_read - t0),
        "decode": ms(t_decode - t_read),
        "queue": ms(result.queue_s),
        "inference": ms(result.inference_s),
        "postprocess": ms(t_end - t_model),
        "total": ms(t_end - t0),
    }
    body = detect_body(service, result, key, up, filename, stamp)
    running = partial(worker.model.fingerprint, result.info, service.config.class_name, ref_fp)
    body.update(decide(service.config, running, result.score))
    body.update(timing_ms=timing, heatmap=hm, request_id=request_id_of(request))
    return JSONResponse(body)  # built here, not re-validated by the response model (which documents it)


def detect_body(
    service: Service,
    result: DetectResult,
    key: tuple[str, str] | None,
    up: DecodedUpload,
    filename: str | None,
    stamp: str | None,
) -> dict[str, Any]:
    """The answer's fields besides timings, heatmap and request id (see :class:`DetectResponse`)."""
    config, inf = service.config, result.info
    threshold = config.threshold
    decision = None if threshold is None else ("anomalous" if result.score >= threshold else "normal")
    return {
        "score": result.score,
        "decision": decision,
        "threshold": threshold,
        "class_name": config.class_name,
        "method": inf.get("method"),
        "model": inf.get("model"),
        "weights_id": inf.get("weights_id"),
        "shots": int(inf.get("shots") or 0),
        "references": key[0] if key else None,
        "reference_version": result.reference_version if key else None,
        "random_weights": bool(inf.get("random_weights")),
        "warning": stamp,
        "image": {
            "width": up.width,
            "height": up.height,
            "format": up.format,
            "filename": (filename or None) and filename[:200],
        },
        "timing_ms": {},
        "batch_size": result.batch_size,
        "heatmap": None,
        "request_id": None,
    }
