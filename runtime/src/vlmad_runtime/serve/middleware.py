"""The outermost layer: request id, Host/Origin guard, API key, metrics, last-resort JSON 500."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders

from vlmad_runtime.serve.errors import error_response
from vlmad_runtime.serve.limits import ApiError
from vlmad_runtime.serve.service import Service

log = logging.getLogger("vlmad_runtime.serve")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ServiceMiddleware:
    """Request id, API key, metrics by route template, and a last-resort JSON 500 (no stack trace leaves)."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service

    def _needs_key(self, path: str) -> bool:
        return bool(self.service.config.api_key) and (path.startswith("/v1/") or path == "/v1" or path == "/metrics")

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
            self.service.guard.check(scope)
        except ApiError as err:
            metrics.errors.inc(code=err.code)
            await error_response(err, request_id)(scope, receive, send_wrapper)
            metrics.requests.inc(route=_route_of(scope, path), method=scope.get("method", ""), status=str(err.status))
            return
        try:
            if self._needs_key(path) and not self._authorized(scope):
                err = ApiError(
                    401,
                    "unauthorized",
                    "missing or wrong API key",
                    "send the key as header 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                metrics.errors.inc(code=err.code)
                await error_response(err, request_id)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in request %s %s (request id %s)", scope.get("method"), path, request_id)
            if status["code"] is None:
                err = ApiError(
                    500,
                    "internal_error",
                    "internal server error",
                    f"report request id {request_id}; the server log has the details",
                )
                metrics.errors.inc(code=err.code)
                await error_response(err, request_id)(scope, receive, send_wrapper)
        finally:
            metrics.requests.inc(
                route=_route_of(scope, path), method=scope.get("method", ""), status=str(status["code"] or 500)
            )


def _route_of(scope, path: str) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    return "/static" if path.startswith("/static/") else "unmatched"
