"""``POST /v1/ask`` (retrieve and rerank, and answer) and ``POST /v1/search`` (the first stage only)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.render import explanation_to_dict, hit_to_dict, result_to_dict
from pipeline.scoring import explain_candidates
from server.schemas import AskRequest, SearchRequest
from server.service import App, Service, authorize, server_timing

router = APIRouter(tags=["pipeline"], dependencies=[Depends(authorize)])


def cached(app: Service, response: Response, key: str | None) -> dict[str, Any] | None:
    """The cached answer for ``key`` (None: not cached, or ``key`` None); a hit says so in Server-Timing."""
    start = time.perf_counter()
    answer = app.cache.get(key) if key is not None else None
    if answer is not None:
        response.headers["Server-Timing"] = f'cache;desc="hit";dur={(time.perf_counter() - start) * 1000:.1f}'
    return answer


@router.post("/v1/ask")
def ask(body: AskRequest, app: App, request: Request, response: Response) -> dict[str, Any]:
    """Retrieve ``top_k`` candidates and rerank them to ``top_n``: both lists, timings, version, config.

    A repeated request (same config, index version and body) is answered from the response cache,
    unless it generates an answer.
    """
    flt = app.check_filter(body.filter)
    query = app.check_query(body.query)
    served, pipe = app.pipeline(body.config, body.collection, request)
    top_k = app.check_top_k(body.top_k)
    generates = body.answer if body.answer is not None else pipe.config.generator is not None
    key = None if generates else app.cache.key(served.name, pipe.version, "ask", body.model_dump())
    if (answer := cached(app, response, key)) is not None:
        return answer
    result = pipe.ask(query, top_k, body.top_n, rerank=body.reranker, weight=body.weight,
                      generate=body.answer, filter=flt, explain=body.explain)
    app.metrics.observe_timings(result.timings)
    response.headers["Server-Timing"] = server_timing(result.timings)
    answer = result_to_dict(result, config=served.name, index_version=pipe.version)
    if body.collection is not None:
        answer["collection"] = body.collection
    if key is not None:
        app.cache.put(key, answer)
    return answer


@router.post("/v1/search")
def search(body: SearchRequest, app: App, request: Request, response: Response) -> dict[str, Any]:
    """The first stage only: ``top_k`` hits with their retrieval scores."""
    flt = app.check_filter(body.filter)
    query = app.check_query(body.query)
    served, pipe = app.pipeline(body.config, body.collection, request)
    top_k = app.check_top_k(body.top_k) or pipe.top_k
    key = app.cache.key(served.name, pipe.version, "search", body.model_dump())
    if (answer := cached(app, response, key)) is not None:
        return answer
    timings: dict[str, float] = {}
    start = time.perf_counter()
    hits = pipe.search(query, top_k, timings, filter=flt)
    timings["total"] = time.perf_counter() - start
    app.metrics.observe_timings(timings)
    response.headers["Server-Timing"] = server_timing(timings)
    out = {
        "query": query,
        "retrieved": [hit_to_dict(h) for h in hits],
        "timings_ms": {k: round(v * 1000, 2) for k, v in timings.items()},
        "config": served.name,
        "index_version": pipe.version,
        **({"collection": body.collection} if body.collection is not None else {}),
    }
    if body.explain:
        out["explain"] = explanation_to_dict(explain_candidates(hits, hits, top_k=top_k, top_n=len(hits),
                                                                filter=str(flt) if flt else None))
    app.cache.put(key, out)
    return out
