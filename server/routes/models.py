"""``GET /v1/configs`` (for the web page) and ``GET /v1/models`` (the served configs as OpenAI models)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from server.errors import ApiError
from server.service import App, Service, authorize

router = APIRouter(tags=["pipeline"], dependencies=[Depends(authorize)])


@router.get("/v1/configs")
def list_configs(app: App) -> dict[str, Any]:
    """The configs this server answers with; ``config`` in a request picks one by name."""
    out = []
    for served in app.pipelines.served.values():
        config, reranker = served.config, served.config.reranker
        loaded = served.pipeline
        out.append({
            "name": served.name,
            "default": served.name == app.pipelines.default,
            "reranker": reranker is not None,
            "reranker_model": (loaded.reranker.describe().get("model")
                               if reranker is not None and loaded is not None else None),
            "retriever": config.retriever.type,
            "top_k": config.retriever.params.top_k,
            "top_n": reranker.params.top_n if reranker is not None else None,
            "weight": reranker.params.weight if reranker is not None else None,
            "index_version": loaded.version if loaded is not None else None,
            "generator": config.generator.type if config.generator is not None else None,
        })
    return {"default": app.pipelines.default, "configs": out}


def model_card(app: Service, name: str) -> dict[str, Any]:
    """One served config as an OpenAI model object (what chat front ends list before they send anything)."""
    served = app.pipelines.resolve(name)
    config = served.config
    return {"id": served.name, "object": "model", "created": app.started, "owned_by": "rerank-rag",
            "default": served.name == app.pipelines.default,
            "reranker": config.reranker.type if config.reranker is not None else None,
            "generator": config.generator.type if config.generator is not None else None}


@router.get("/v1/models")
def list_models(app: App) -> dict[str, Any]:
    """The served configs as OpenAI models: ``model`` in a chat or rerank request picks one by ``id``."""
    return {"object": "list", "data": [model_card(app, name) for name in app.pipelines.served]}


@router.get("/v1/models/{name}")
def get_model(name: str, app: App) -> dict[str, Any]:
    """One served config as an OpenAI model (404 for another name)."""
    if name not in app.pipelines.served:
        raise ApiError(404, "not_found", f"no model {name!r}; this server has: {', '.join(app.pipelines.served)}")
    return model_card(app, name)
