"""``POST /v1/rerank`` and ``/v2/rerank`` (Cohere's shape) and ``POST /rerank`` (Text Embeddings Inference's)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from pipeline.types import ScoreOptions
from server.schemas import CohereRerankRequest, TeiRerankRequest
from server.service import App, Service, authorize, server_timing

router = APIRouter(tags=["rerank"], dependencies=[Depends(authorize)])

UNSCORED_LOGIT = -100.0  # a raw score for a pair the model did not read (sigmoid: 0)


def reported(score: float, raw: bool = False) -> float:
    """A score as the JSON carries it: an unscored pair is relevance 0 (raw: a logit of -100)."""
    return float(score) if np.isfinite(score) else (UNSCORED_LOGIT if raw else 0.0)


def model_of(app: Service, request: Request, model: str | None, collection: str | None) -> str | None:
    """The served config a rerank call uses: ``model`` when it names one, else the collection's (read needed)."""
    if collection is None:
        return model
    app.require(request, collection, "read")
    return model if model in app.pipelines.served else app.knowledge.get(collection).config


def cohere_rerank(app: Service, body: CohereRerankRequest, api_version: str, request: Request,
                  response: Response) -> dict[str, Any]:
    """Documents longer than the model's window are scored by windows, up to ``max_tokens_per_doc`` tokens each."""
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    options = ScoreOptions(long="windows", max_tokens=body.max_tokens_per_doc or app.settings.max_tokens_per_doc)
    model = model_of(app, request, body.model, body.collection)
    name, scores, order, seconds = app.rerank(model, body.query, texts, options)
    response.headers["Server-Timing"] = server_timing({"rerank": seconds})
    results = []
    for i in order[: body.top_n or len(texts)]:
        item: dict[str, Any] = {"index": int(i), "relevance_score": reported(scores[i])}
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}, "config": name,
                 **({"collection": body.collection} if body.collection is not None else {})},
    }


@router.post("/v1/rerank")
def rerank_v1(body: CohereRerankRequest, app: App, request: Request, response: Response) -> dict[str, Any]:
    """Cohere's rerank: documents sorted by relevance (calibrated, 0..1); ``top_n`` kept."""
    return cohere_rerank(app, body, "1", request, response)


@router.post("/v2/rerank")
def rerank_v2(body: CohereRerankRequest, app: App, request: Request, response: Response) -> dict[str, Any]:
    """Cohere's v2 rerank (what ``cohere.ClientV2().rerank`` posts to); same answer as ``/v1/rerank``."""
    return cohere_rerank(app, body, "2", request, response)


@router.post("/rerank")
def rerank_tei(body: TeiRerankRequest, app: App, request: Request, response: Response) -> list[dict[str, Any]]:
    """Text Embeddings Inference's rerank: ``[{index, score, text?}]`` sorted by score (0..1, or the raw logit
    with ``raw_scores``). ``truncate`` true cuts a long text from ``truncation_direction``, false refuses it
    (413), omitted scores it by overlapping windows of the model's length, keeping the best."""
    long = "windows" if body.truncate is None else ("truncate" if body.truncate else "error")
    options = ScoreOptions(raw=body.raw_scores, long=long, side=body.truncation_direction.lower())
    _, scores, order, seconds = app.rerank(model_of(app, request, None, body.collection), body.query, body.texts,
                                           options)
    response.headers["Server-Timing"] = server_timing({"rerank": seconds})
    out = []
    for i in order:
        item: dict[str, Any] = {"index": int(i), "score": reported(scores[i], body.raw_scores)}
        if body.return_text:
            item["text"] = body.texts[i]
        out.append(item)
    return out
