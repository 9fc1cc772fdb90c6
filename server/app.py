"""The FastAPI app: a small factory that assembles the service, the middleware, the errors and the routes.

Endpoints (docs/serving.md has a curl example for each; one module per group in ``server/routes``):

=====================  ==============================================================
``POST /v1/ask``       retrieve and rerank (and answer); the JSON of ``ask.py --json`` + config, index_version
``POST /v1/chat/completions``  OpenAI's chat shape: a grounded, cited answer; ``stream`` for server-sent events
``POST /v1/search``    the first stage only
``POST /v1/rerank``    Cohere's rerank shape (also ``/v2/rerank``, for the SDK's ClientV2)
``POST /rerank``       Text Embeddings Inference's rerank shape
``GET /v1/configs``    the served configs and their defaults
``GET /v1/models``     the served configs as OpenAI models (``/v1/models/{id}``: one)
``GET /healthz``       alive; ``GET /readyz``: models and index loaded (503 until then)
``GET /metrics``       Prometheus text format
``GET /``              the web page (``server/static``); ``/docs``: OpenAPI
=====================  ==============================================================

Every error is a JSON body ``{"error": KIND, "message": TEXT}`` with its status, from one table
(:data:`server.errors.ERROR_STATUS`): 422 invalid body, query, filter or ``top_k``; 401 bad API key;
413 body, document list or (TEI, ``truncate: false``) text too large; 503 not ready or rerank queue
full (with ``Retry-After``); 502 generator failure; 500 anything unexpected (logged; the body never
holds a traceback).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from pipeline.config import PipelineConfig, ServerParams
from server.batching import QueueFullError
from server.errors import install_error_handlers
from server.middleware import BodyLimit, observe_requests
from server.routes import ROUTERS
from server.routes.page import STATIC
from server.service import Service
from server.watch import start_watches, stop_watches


def create_app(
    configs: Mapping[str, PipelineConfig],
    index_paths: Mapping[str, str | Path] | None = None,
    *,
    settings: ServerParams | None = None,
    load: bool = True,
) -> FastAPI:
    """An app serving the named ``configs`` (the first is the default).

    Args:
        index_paths: name -> index folder overriding that config's ``index.path``.
        settings: the ``server`` section (default: the first config's).
        load: load models and index in a background thread at startup (False: call
            ``app.state.pipelines.load()`` yourself); ``/readyz`` answers 503 until done.
    """
    service = Service(configs, index_paths, settings or next(iter(configs.values())).server, load=load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start_loading()
        watches = start_watches(service.knowledge)  # configs with a watch: section keep their folder in sync
        yield
        stop_watches(watches)
        service.close()

    app = FastAPI(title="rerank-rag", version="0.1.0", lifespan=lifespan,
                  summary="Retrieve-then-rerank over a FAISS or Milvus index, with a cross-encoder.")
    app.state.service = service
    app.state.pipelines, app.state.metrics, app.state.settings = service.pipelines, service.metrics, service.settings
    settings = service.settings
    upload_limit = int(settings.max_upload_mb * 2**20) * settings.max_upload_files + 2**20  # + multipart overhead
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, upload_limit=upload_limit)
    observe_requests(app, service.metrics)

    def count_rejections(exc: Exception, status: int) -> None:
        if isinstance(exc, QueueFullError):
            service.metrics.queue_rejections.inc()

    install_error_handlers(app, on_error=count_rejections)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
