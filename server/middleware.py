"""ASGI middleware of the app: the request body limit, and request counts and latency per endpoint."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.metrics import Metrics


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is a 413 (by Content-Length, or while reading)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over {self.limit} bytes (server.max_body_bytes)"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.limit
                except ValueError:
                    too_large = False
                if too_large:
                    response = JSONResponse({"error": "too_large", "message": message}, status_code=413)
                    return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, message)
            return msg

        return await self.app(scope, limited, send)


def observe_requests(app: FastAPI, metrics: Metrics) -> None:
    """Count each request by endpoint, method and status, and time it by endpoint."""

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "other")
            metrics.requests.labels(endpoint, request.method, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
