"""Errors as JSON: one table from the project's error types to HTTP statuses, and the handlers that use it.

Every error is a body ``{"error": KIND, "message": TEXT}`` with its status, never a traceback:
the first row of :data:`ERROR_STATUS` whose type matches an error decides; anything else is a 500
``internal`` (logged with its traceback on the server).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pipeline.errors import ConfigError, GeneratorError, InputError, PassageTooLongError, RagError
from server.batching import QueueFullError
from server.pipelines import NotReadyError

logger = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "1"}

# error type -> (status, kind, extra headers); the first matching row wins, so subclasses come first
ERROR_STATUS: tuple[tuple[type[RagError], int, str, dict[str, str] | None], ...] = (
    (PassageTooLongError, 413, "too_large", None),
    (InputError, 422, "invalid_request", None),
    (ConfigError, 422, "invalid_request", None),
    (QueueFullError, 503, "overloaded", RETRY_AFTER),
    (NotReadyError, 503, "not_ready", RETRY_AFTER),
    (GeneratorError, 502, "generator_error", None),
    (RagError, 500, "pipeline_error", None),
)
HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ApiError(Exception):
    """An error a route answers with ``status`` and a JSON body."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


def status_of(exc: RagError) -> tuple[int, str, dict[str, str] | None]:
    """The (status, kind, headers) of a project error, from :data:`ERROR_STATUS`."""
    return next((status, kind, headers) for cls, status, kind, headers in ERROR_STATUS if isinstance(exc, cls))


def install_error_handlers(app: FastAPI, on_error=None) -> None:
    """Answer every error as JSON; ``on_error(exc, status)`` is told of each project error (metrics)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts[:10]))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RagError)
    async def _rag(request: Request, exc: RagError):
        status, kind, headers = status_of(exc)
        if status == 500:
            logger.error("%s: %s", type(exc).__name__, exc)
        if on_error is not None:
            on_error(exc, status)
        return error_response(status, kind, str(exc), headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error (see the server's log)")
