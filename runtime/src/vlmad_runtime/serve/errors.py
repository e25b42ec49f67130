"""How the service says no: the JSON error body, its handlers, and the shared 503/504 answers."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmad_runtime.serve.limits import ApiError, Limits
from vlmad_runtime.serve.metrics import ServiceMetrics


def error_response(err: ApiError, request_id: str | None) -> JSONResponse:
    headers = {"X-Request-ID": request_id or "", **err.headers}
    return JSONResponse(err.body(request_id), status_code=err.status, headers=headers)


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def overloaded(limits: Limits) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"{limits.max_queue} requests are already waiting for the model",
        "retry later, or run more replicas",
        headers={"Retry-After": "1"},
    )


async def with_timeout(coro, timeout_s: float):
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            504,
            "timeout",
            f"the request did not finish within {timeout_s:g} s",
            "the server is overloaded or the upload too slow; retry later",
        ) from None


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error answers ``{"error": {"code", "message", "hint"}, "request_id"}`` and is counted by code."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        metrics.errors.inc(code=err.code)
        return error_response(err, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        api = ApiError(
            422,
            "invalid_parameter",
            f"invalid request parameter(s): {problems}",
            "see /openapi.json for the accepted parameters",
        )
        metrics.errors.inc(code=api.code)
        return error_response(api, request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, f"http_{err.status_code}")
        hint = "see /openapi.json for the routes" if err.status_code in (404, 405) else None
        api = ApiError(err.status_code, code, str(err.detail), hint, headers=dict(err.headers or {}))
        metrics.errors.inc(code=api.code)
        return error_response(api, request_id_of(request))
