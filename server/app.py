"""The FastAPI app: the pipeline's endpoints, errors as JSON, metrics, readiness, the web page.

Endpoints (docs/serving.md has a curl example for each):

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

Every error is a JSON body ``{"error": KIND, "message": TEXT}`` with its status:
422 malformed or unmatched filter, 401 bad API key, 413 body or document list too large,
422 invalid body, 503 not ready or rerank queue full (with ``Retry-After``),
500 anything unexpected (logged; the body never holds a traceback).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from pipeline.config import PipelineConfig, ServerParams
from pipeline.errors import ConfigError, GeneratorError, InputError, PassageTooLongError, RagError
from pipeline.filters import Filter
from pipeline.pipeline import validate_query
from pipeline.render import answer_to_dict, hit_to_dict, result_to_dict
from pipeline.types import Answer, ScoreOptions
from server.batching import QueueFullError
from server.metrics import CONTENT_TYPE, Metrics
from server.pipelines import NotReadyError, PipelineSet
from server.schemas import AskRequest, ChatRequest, CohereRerankRequest, SearchRequest, TeiRerankRequest

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_S = "1"
UNSCORED_LOGIT = -100.0  # a raw score for a pair the model did not read (sigmoid: 0)


class ApiError(Exception):
    """An error answered with ``status`` and a JSON body."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


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
    settings = settings or next(iter(configs.values())).server
    metrics = Metrics()
    pipelines = PipelineSet(
        configs, index_paths, settings, on_batch=metrics.observe_batch,
        on_swap=lambda name, old, new: metrics.index_swaps.inc(),
    )
    api_key = os.environ.get(settings.api_key_env) or None
    loader: dict[str, threading.Thread | None] = {"thread": None}

    def start_loading() -> None:
        thread = loader["thread"]
        if load and not pipelines.ready and (thread is None or not thread.is_alive()):
            loader["thread"] = threading.Thread(target=_load, name="pipeline-loader", daemon=True)
            loader["thread"].start()

    def _load() -> None:
        try:
            pipelines.load()
            metrics.ready.set(1)
            logger.info("ready: %s", ", ".join(f"{s.name} ({s.pipeline.version})" for s in pipelines.served.values()))
        except Exception as exc:  # reported by /readyz; retried on its next call
            pipelines.error = f"loading failed: {exc}"
            logger.error("%s", pipelines.error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start_loading()
        yield
        pipelines.close()

    app = FastAPI(
        title="rerank-rag",
        summary="Retrieve-then-rerank over a FAISS or Milvus index, with a cross-encoder.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.pipelines = pipelines
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})

    def check_query(query: str) -> str:
        if len(query) > settings.max_query_chars:
            raise ApiError(422, "invalid_request", f"query is {len(query)} characters; the limit is "
                           f"{settings.max_query_chars} (server.max_query_chars)")
        return validate_query(query)

    def check_top_k(top_k: int | None) -> int | None:
        if top_k is not None and top_k > settings.max_top_k:
            raise ApiError(422, "invalid_request", f"top_k is {top_k}; the limit is {settings.max_top_k} "
                           "(server.max_top_k)")
        return top_k

    def check_filter(value: Any) -> Filter | None:
        """The request's filter, parsed once (a malformed one is a 422 that names the problem)."""
        return Filter.from_value(value)

    # -- errors -----------------------------------------------------------------------------------

    def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error(422, "invalid_request", "; ".join(parts[:10]))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return error(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RagError)
    async def _rag(request: Request, exc: RagError):
        if isinstance(exc, PassageTooLongError):
            return error(413, "too_large", str(exc))
        if isinstance(exc, (InputError, ConfigError)):
            return error(422, "invalid_request", str(exc))
        if isinstance(exc, QueueFullError):
            metrics.queue_rejections.inc()
            return error(503, "overloaded", str(exc), {"Retry-After": RETRY_AFTER_S})
        if isinstance(exc, NotReadyError):
            return error(503, "not_ready", str(exc), {"Retry-After": RETRY_AFTER_S})
        if isinstance(exc, GeneratorError):
            return error(502, "generator_error", str(exc))
        logger.error("%s: %s", type(exc).__name__, exc)
        return error(500, "pipeline_error", str(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal", "internal server error (see the server's log)")

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

    # -- endpoints --------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Alive (the process answers); says nothing about the models."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        """200 once every config's models and index are loaded, else 503 (retried loading on failure)."""
        if not pipelines.ready:
            start_loading()
            return error(503, "not_ready", pipelines.error or "models and index are still loading",
                         {"Retry-After": RETRY_AFTER_S})
        return {"status": "ready", "index_versions": {s.name: s.pipeline.version for s in pipelines.served.values()}}

    @app.get("/metrics", tags=["health"])
    def prometheus() -> Response:
        """Request counts and latency per endpoint, time per stage, rerank batch sizes (Prometheus)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/configs", tags=["pipeline"], dependencies=[Depends(authorize)])
    def list_configs() -> dict[str, Any]:
        """The configs this server answers with; ``config`` in a request picks one by name."""
        out = []
        for served in pipelines.served.values():
            config = served.config
            reranker = config.reranker
            out.append({
                "name": served.name,
                "default": served.name == pipelines.default,
                "reranker": reranker is not None,
                "reranker_model": (served.pipeline.reranker.describe().get("model")
                                   if reranker is not None and served.pipeline is not None else None),
                "retriever": config.retriever.type,
                "top_k": config.retriever.params.top_k,
                "top_n": reranker.params.top_n if reranker is not None else None,
                "weight": reranker.params.weight if reranker is not None else None,
                "index_version": served.pipeline.version if served.pipeline is not None else None,
                "generator": config.generator.type if config.generator is not None else None,
            })
        return {"default": pipelines.default, "configs": out}

    started = int(time.time())

    def model_card(name: str) -> dict[str, Any]:
        """One served config as an OpenAI model object (what chat front ends list before they send anything)."""
        served = pipelines.resolve(name)
        config = served.config
        return {"id": served.name, "object": "model", "created": started, "owned_by": "rerank-rag",
                "default": served.name == pipelines.default,
                "reranker": config.reranker.type if config.reranker is not None else None,
                "generator": config.generator.type if config.generator is not None else None}

    @app.get("/v1/models", tags=["pipeline"], dependencies=[Depends(authorize)])
    def list_models() -> dict[str, Any]:
        """The served configs as OpenAI models: ``model`` in a chat or rerank request picks one by ``id``."""
        return {"object": "list", "data": [model_card(name) for name in pipelines.served]}

    @app.get("/v1/models/{name}", tags=["pipeline"], dependencies=[Depends(authorize)])
    def get_model(name: str) -> dict[str, Any]:
        """One served config as an OpenAI model (404 for another name)."""
        if name not in pipelines.served:
            raise ApiError(404, "not_found", f"no model {name!r}; this server has: {', '.join(pipelines.served)}")
        return model_card(name)

    @app.post("/v1/ask", tags=["pipeline"], dependencies=[Depends(authorize)])
    def ask(body: AskRequest) -> dict[str, Any]:
        """Retrieve ``top_k`` candidates and rerank them to ``top_n``: both lists, timings, version, config."""
        flt = check_filter(body.filter)
        query = check_query(body.query)
        served, pipe = pipelines.get(body.config)
        result = pipe.ask(query, check_top_k(body.top_k), body.top_n, rerank=body.reranker, weight=body.weight,
                          generate=body.answer, filter=flt)
        metrics.observe_timings(result.timings)
        return result_to_dict(result, config=served.name, index_version=pipe.version)

    @app.post("/v1/chat/completions", tags=["pipeline"], dependencies=[Depends(authorize)])
    def chat_completions(body: ChatRequest):
        """OpenAI's chat completions over the pipeline: the last user message is retrieved, reranked and
        answered by the config's generator. ``rag`` in the reply (in the last chunk when streaming) holds
        the citations, the numbered passages and the timings; streamed pieces are the model's raw text."""
        question = next((m.text for m in reversed(body.messages) if m.role == "user"), "")
        query = check_query(question)
        served, pipe = pipelines.get(body.model if body.model in pipelines.served else None)
        if pipe.config.generator is None:
            raise ApiError(400, "unsupported", f"config {served.name!r} has no generator: section (docs/answers.md)")
        result = pipe.ask(query, check_top_k(body.top_k), body.top_n, generate=False)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": created, "model": served.name}

        def usage(answer: Answer) -> dict[str, int]:
            total = answer.prompt_tokens + answer.completion_tokens
            return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                    "total_tokens": total}

        def rag(answer: Answer) -> dict[str, Any]:
            return {**answer_to_dict(answer), "index_version": pipe.version,
                    "timings_ms": {k: round(v * 1000, 2) for k, v in {**result.timings, **answer.timings}.items()}}

        if not body.stream:
            answered = pipe.answer(result, body.answer_tokens)
            metrics.observe_timings(answered.timings)
            answer = answered.answer
            return {**head, "object": "chat.completion", "usage": usage(answer), "rag": rag(answer), "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer.text},
                 "finish_reason": answer.finish_reason or "stop"}]}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                for item in pipe.stream_answer(result, body.answer_tokens):
                    if isinstance(item, Answer):
                        yield chunk({}, item.finish_reason or "stop", rag=rag(item))
                        if (body.stream_options or {}).get("include_usage"):
                            data = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(item)}
                            yield f"data: {json.dumps(data)}\n\n"
                    else:
                        yield chunk({"content": item})
            except RagError as exc:  # the status is sent already: report in the stream, as OpenAI does
                logger.warning("answer failed: %s", exc)
                kind = "generator_error" if isinstance(exc, GeneratorError) else "pipeline_error"
                yield f"data: {json.dumps({'error': {'type': kind, 'message': str(exc)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/search", tags=["pipeline"], dependencies=[Depends(authorize)])
    def search(body: SearchRequest) -> dict[str, Any]:
        """The first stage only: ``top_k`` hits with their retrieval scores."""
        flt = check_filter(body.filter)
        query = check_query(body.query)
        served, pipe = pipelines.get(body.config)
        top_k = check_top_k(body.top_k) or pipe.top_k
        timings: dict[str, float] = {}
        start = time.perf_counter()
        hits = pipe.search(query, top_k, timings, filter=flt)
        timings["total"] = time.perf_counter() - start
        metrics.observe_timings(timings)
        return {
            "query": query,
            "retrieved": [hit_to_dict(h) for h in hits],
            "timings_ms": {k: round(v * 1000, 2) for k, v in timings.items()},
            "config": served.name,
            "index_version": pipe.version,
        }

    def rerank_scores(
        model: str | None, query: str, texts: list[str], options: ScoreOptions
    ) -> tuple[str, np.ndarray, np.ndarray]:
        """The served config's name, each text's score (NaN: not scored) and the order, best first.

        A list longer than one batch (``max_batch_pairs``) is scored in batches by the queue; only one
        over ``max_documents`` is refused.
        """
        if len(texts) > settings.max_documents:
            raise ApiError(413, "too_large", f"{len(texts)} documents; the limit is {settings.max_documents} "
                           "(server.max_documents; longer lists are served in batches up to it)")
        if not texts:
            raise ApiError(422, "invalid_request", "documents is empty; send at least one")
        query = check_query(query)
        name = model if model in pipelines.served else None
        if name is None:
            with_reranker = [s.name for s in pipelines.served.values() if s.config.reranker is not None]
            if not with_reranker:
                raise ApiError(400, "unsupported", "no served config has a reranker")
            name = with_reranker[0]
        served, pipe = pipelines.get(name)
        if pipe.reranker is None:
            raise ApiError(400, "unsupported", f"config {served.name!r} has no reranker")
        start = time.perf_counter()
        scores = np.asarray(pipe.reranker.score_many([(query, texts)], options)[0], dtype=np.float32)
        metrics.stage.labels("rerank").observe(time.perf_counter() - start)
        # A pair the model cannot read (outside its languages) has no score (NaN): ranked last.
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
        return served.name, scores, order

    def reported(score: float, raw: bool = False) -> float:
        """A score as the JSON carries it: an unscored pair is relevance 0 (raw: a logit of -100)."""
        return float(score) if np.isfinite(score) else (UNSCORED_LOGIT if raw else 0.0)

    def cohere_rerank(body: CohereRerankRequest, api_version: str) -> dict[str, Any]:
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        options = ScoreOptions(long="windows", max_tokens=body.max_tokens_per_doc or settings.max_tokens_per_doc)
        name, scores, order = rerank_scores(body.model, body.query, texts, options)
        order = order[: body.top_n or len(texts)]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": int(i), "relevance_score": reported(scores[i])}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}, "config": name},
        }

    @app.post("/v1/rerank", tags=["rerank"], dependencies=[Depends(authorize)])
    def rerank_v1(body: CohereRerankRequest) -> dict[str, Any]:
        """Cohere's rerank: documents sorted by relevance (sigmoid, 0..1); ``top_n`` kept."""
        return cohere_rerank(body, "1")

    @app.post("/v2/rerank", tags=["rerank"], dependencies=[Depends(authorize)])
    def rerank_v2(body: CohereRerankRequest) -> dict[str, Any]:
        """Cohere's v2 rerank (what ``cohere.ClientV2().rerank`` posts to); same answer as ``/v1/rerank``."""
        return cohere_rerank(body, "2")

    @app.post("/rerank", tags=["rerank"], dependencies=[Depends(authorize)])
    def rerank_tei(body: TeiRerankRequest) -> list[dict[str, Any]]:
        """Text Embeddings Inference's rerank: ``[{index, score, text?}]`` sorted by score (0..1, or the raw logit
        with ``raw_scores``). ``truncate`` true cuts a long text from ``truncation_direction``, false refuses it
        (413), omitted scores it by overlapping windows of the model's length, keeping the best."""
        long = "windows" if body.truncate is None else ("truncate" if body.truncate else "error")
        options = ScoreOptions(raw=body.raw_scores, long=long, side=body.truncation_direction.lower())
        _, scores, order = rerank_scores(None, body.query, body.texts, options)
        out = []
        for i in order:
            item: dict[str, Any] = {"index": int(i), "score": reported(scores[i], body.raw_scores)}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return out

    @app.get("/", include_in_schema=False)
    def page():
        index = STATIC / "index.html"
        if not index.is_file():
            raise ApiError(404, "not_found", "no web page installed (server/static/index.html)")
        return FileResponse(index)

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


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
