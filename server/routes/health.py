"""``GET /healthz``, ``/readyz`` and ``/metrics``: open without the API key."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.errors import RETRY_AFTER, error_response
from server.metrics import CONTENT_TYPE
from server.service import App

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive (the process answers); says nothing about the models."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(app: App):
    """200 once every config's models and index are loaded, else 503 (retried loading on failure)."""
    pipelines = app.pipelines
    if not pipelines.ready:
        app.start_loading()
        return error_response(503, "not_ready", pipelines.error or "models and index are still loading", RETRY_AFTER)
    return {"status": "ready", "index_versions": {s.name: s.pipeline.version for s in pipelines.served.values()}}


@router.get("/metrics")
def prometheus(app: App) -> Response:
    """Request counts and latency per endpoint, time per stage, rerank batch sizes (Prometheus)."""
    return Response(app.metrics.render(), media_type=CONTENT_TYPE)
