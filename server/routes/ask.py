"""``POST /v1/ask`` (retrieve and rerank, and answer) and ``POST /v1/search`` (the first stage only)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Response

from pipeline.render import explanation_to_dict, hit_to_dict, result_to_dict
from pipeline.scoring import explain_candidates
from server.schemas import AskRequest, SearchRequest
from server.service import App, authorize, server_timing

router = APIRouter(tags=["pipeline"], dependencies=[Depends(authorize)])


@router.post("/v1/ask")
def ask(body: AskRequest, app: App, response: Response) -> dict[str, Any]:
    """Retrieve ``top_k`` candidates and rerank them to ``top_n``: both lists, timings, version, config."""
    flt = app.check_filter(body.filter)
    query = app.check_query(body.query)
    served, pipe = app.pipeline(body.config)
    result = pipe.ask(query, app.check_top_k(body.top_k), body.top_n, rerank=body.reranker, weight=body.weight,
                      generate=body.answer, filter=flt, explain=body.explain)
    app.metrics.observe_timings(result.timings)
    response.headers["Server-Timing"] = server_timing(result.timings)
    return result_to_dict(result, config=served.name, index_version=pipe.version)


@router.post("/v1/search")
def search(body: SearchRequest, app: App, response: Response) -> dict[str, Any]:
    """The first stage only: ``top_k`` hits with their retrieval scores."""
    flt = app.check_filter(body.filter)
    query = app.check_query(body.query)
    served, pipe = app.pipeline(body.config)
    top_k = app.check_top_k(body.top_k) or pipe.top_k
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
    }
    if body.explain:
        out["explain"] = explanation_to_dict(explain_candidates(hits, hits, top_k=top_k, top_n=len(hits),
                                                                filter=str(flt) if flt else None))
    return out
