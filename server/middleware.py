"""ASGI middleware of the app: the request body limit, and request counts and latency per endpoint."""

from __future__ import annotations

import re
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.metrics import Metrics

UPLOAD_PATH = re.compile(r"/v1/collections/[^/]+/documents/?")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is a 413 (by Content-Length, or while reading).

    An upload (``POST /v1/collections/{name}/documents``) has its own limit, ``upload_limit``.
    """

    def __init__(self, app, limit: int, upload_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit or limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, setting = self.limit, "server.max_body_bytes"
        if scope.get("method") == "POST" and UPLOAD_PATH.fullmatch(scope.get("path", "")):
            limit, setting = self.upload_limit, "server.max_upload_mb x server.max_upload_files"
        message = f"request body over {limit} bytes ({setting})"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
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
                if received > limit:
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
