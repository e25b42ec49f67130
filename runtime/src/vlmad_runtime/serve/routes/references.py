"""``/v1/references``: named few-shot reference sets (list, show, upload, delete)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from vlmad_runtime.serve.bodies import extract_reference_images, read_body
from vlmad_runtime.serve.errors import with_timeout
from vlmad_runtime.serve.imaging import decode_references
from vlmad_runtime.serve.limits import ApiError, validate_set_name
from vlmad_runtime.serve.references import ReferenceSetNotFoundError
from vlmad_runtime.serve.schemas import ERRORS, REFERENCE_BODY, ReferenceSetList, ReferenceSetResponse
from vlmad_runtime.serve.service import Service, ms


def router(service: Service) -> APIRouter:
    r = APIRouter(tags=["references"], responses=ERRORS)
    limits = service.config.limits

    @r.get(
        "/v1/references",
        response_model=ReferenceSetList,
        summary="List reference sets.",
    )
    async def list_references():
        return {"sets": [service.set_response(i.name) for i in service.store.list()]}

    @r.get(
        "/v1/references/{name}",
        response_model=ReferenceSetResponse,
        summary="One reference set.",
    )
    async def get_reference(name: str):
        return service.set_response(validate_set_name(name))

    @r.post(
        "/v1/references/{name}",
        response_model=ReferenceSetResponse,
        openapi_extra=REFERENCE_BODY,
        status_code=201,
        summary="Create (or with replace=true overwrite) a reference set from K normal images.",
    )
    async def put_reference(
        request: Request,
        name: str,
        replace: bool = Query(False, description="Overwrite an existing set of this name."),
    ):
        validate_set_name(name)
        service.require_references()
        if not replace and name in service.store.names():
            raise ApiError(
                409,
                "reference_set_exists",
                f"reference set {name!r} already exists",
                "DELETE it first, or POST with ?replace=true to overwrite it",
            )
        return await with_timeout(_upload(service, request, name, replace), limits.request_timeout_s * 4)

    @r.delete("/v1/references/{name}", summary="Delete a reference set.")
    async def delete_reference(name: str):
        info = await run_in_threadpool(service.store.delete, name)
        if service.worker is not None:
            service.worker.forget(name)
        return {"deleted": info.name, "version": info.version}

    return r


async def _upload(service: Service, request: Request, name: str, replace: bool) -> JSONResponse:
    """Read, decode and store the set one image at a time, then fit it once so the first detect is fast."""
    limits = service.config.limits
    hold = service.bodies.hold()
    try:
        body = await read_body(request, limits.max_reference_request_bytes, hold)
        items = extract_reference_images(request.headers.get("content-type", ""), body, limits)
        del body
        info, created = await service.run_decode(
            partial(service.store.put, name, decode_references(items, limits), [fn for _, fn in items], replace)
        )
    finally:
        hold.release()
    extra: dict[str, Any] = {}
    worker = service.worker
    if worker is not None:
        worker.forget(name)
        if worker.ready.is_set():
            t = time.perf_counter()
            try:
                mem = await worker.warm(name)
                extra = {"shots": mem.shots, "fit_ms": ms(time.perf_counter() - t)}
            except ReferenceSetNotFoundError:  # deleted meanwhile: the upload itself succeeded
                pass
    out = info.as_dict()  # this upload's version, even if a DELETE or another upload came after it
    out["memory_cached"] = bool(worker and (name, info.version) in worker.memories)
    out.update(extra)
    return JSONResponse(out, status_code=201 if created else 200)
