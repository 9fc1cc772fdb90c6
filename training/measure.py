"""Measure a reranker the way the pipeline uses it: through the reranker stage and evaluation's code.

A model (one just trained, in memory, or a saved folder) is wrapped in the pipeline's
:class:`~pipeline.rerankers.cross_encoder.CrossEncoderReranker` (a :class:`~pipeline.protocols.Scorer`),
so scores come from the stage's own tokenization and sigmoid, and the candidates are ranked by the
pipeline's one ranking function, :func:`pipeline.scoring.rank_hits`, with ``weight`` the
cross-encoder's share (1 = the reranker alone, 0 = the first stage's order). Queries and judgements come from
:func:`evaluation.collection.load_collection`, each (query, passage) pair is scored once through an
:class:`evaluation.runner.ScoreCache`, and nDCG@10 comes from ranx (:mod:`evaluation.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.collection import load_collection
from evaluation.metrics import evaluate_rankings, fold_to_documents
from evaluation.runner import CachedScorer, ScoreCache
from pipeline.config import PipelineConfig
from pipeline.rerankers.cross_encoder import CrossEncoderReranker
from pipeline.scoring import RankSettings, rank_hits
from pipeline.types import Hit
from training.data import DevQuery
from training.first_stage import FirstStage

logger = logging.getLogger(__name__)

METRIC = "ndcg@10"


def reranker_stage(model, *, max_length: int, batch_size: int = 32) -> CrossEncoderReranker:
    """The pipeline's reranker stage around a loaded ``CrossEncoder`` (scores it as the pipeline would)."""
    device = str(next(model.model.parameters()).device)
    params = CrossEncoderReranker.Params(model=str(getattr(model, "name_or_path", "") or "in-memory"),
                                         max_length=max_length, batch_size=batch_size, device=device)
    return CrossEncoderReranker.from_model(model, params)


def weight_key(weight: float) -> str:
    """How a weight names its result: ``1`` (reranker alone), ``0.5``, ``0.3``."""
    return f"{weight:g}"


class PairScores(CachedScorer):
    """A reranker stage behind its own :class:`ScoreCache` (each (query, passage) pair is scored once),
    timing the scoring it does: ``seconds`` and ``scored`` (pairs computed) for the command's report."""

    def __init__(self, stage: CrossEncoderReranker) -> None:
        super().__init__(stage, ScoreCache())
        self.seconds = 0.0

    @property
    def stage(self) -> CrossEncoderReranker:
        return self.reranker

    @property
    def scored(self) -> int:
        return self.cache.computed

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        start = time.perf_counter()
        scores = super().score(query, passages)
        self.seconds += time.perf_counter() - start
        return scores


def rerank_all(stage: CrossEncoderReranker, hits: Sequence[Hit], scores, weight: float) -> list[str]:
    """Document ids of ``hits`` ranked by ``scores`` at ``weight`` and the stage's ``mix`` (all kept), folded."""
    settings = RankSettings(top_n=max(len(hits), 1), weight=weight, mix=stage.params.mix)
    return [d for d, _ in fold_to_documents(rank_hits(hits, scores, settings))]


def dev_ndcg(stage: CrossEncoderReranker, dev: Sequence[DevQuery], weight: float = 1.0) -> float:
    """Mean nDCG@10 of the dev reranking task: each dev query's candidates reordered by the stage."""
    rankings = {}
    for d in dev:
        hits = [Hit(doc_id, doc_id, text, "", 0, 0.0, i, 0.0, i) for i, (doc_id, text) in enumerate(d.candidates, 1)]
        rankings[d.query_id] = rerank_all(stage, hits, stage.score(d.query, [h.text for h in hits]), weight)
    return evaluate_rankings({d.query_id: d.relevant for d in dev}, rankings, [METRIC]).means[METRIC]


def measure_reranking(
    root: str | Path,
    split: str,
    config: PipelineConfig,
    scorer: PairScores,
    *,
    cache_dir: Path,
    first_stages: Mapping[str, Mapping[str, Any]],
    top_k: int = 50,
    max_queries: int | None = None,
    query_ids: Sequence[str] | None = None,
    weights: Sequence[float] = (1.0,),
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """nDCG@10 of each first stage alone, reranked, and mixed with the reranker, on ``split``.

    Each first stage's top ``top_k`` hits are reordered by the reranker stage as evaluation's
    runner does (all of them, then folded to documents), once per weight.

    Args:
        scorer: the reranker stage with its pair-score cache, shared across calls.
        first_stages: name -> retriever section (``{"type": "bm25", "top_k": 50}``); each runs over the
            same index, built from ``config``'s embedder and chunking.
        max_queries: a seeded random subset of the split's queries (all when None); stated in results.
        query_ids: only these queries (for a dev split carved from train); overrides ``max_queries``.
        weights: the cross-encoder's shares to measure (:func:`pipeline.scoring.mix_scores`);
            1 (the reranker alone) is always measured.

    Returns:
        ``{"collection", "split", "queries", "query_subset", "top_k", "results": {name: {"first_stage",
        "reranked", "delta", "mixed": {weight: nDCG@10}}}}``
    """
    from tqdm.auto import tqdm

    collection = load_collection(root, split)
    if query_ids is not None:
        collection = collection.select(query_ids)
    elif max_queries is not None:
        collection = collection.sample(max_queries, seed)
    qids = list(collection.queries)
    stage = FirstStage(config, collection, cache_dir)
    weights = sorted({1.0, *weights})
    results = {}
    for name, retriever in first_stages.items():
        found = stage.hits([collection.queries[q] for q in qids], top_k, pipeline=stage.pipeline(retriever))
        first: dict[str, list[str]] = {}
        runs: dict[float, dict[str, list[str]]] = {w: {} for w in weights}
        for q, hits in tqdm(list(zip(qids, found)), desc=f"{collection.name} {name}", unit="q", disable=not progress):
            first[q] = [d for d, _ in fold_to_documents(hits)]
            scores = scorer.score(collection.queries[q], [h.text for h in hits])
            for w in weights:
                runs[w][q] = rerank_all(scorer.stage, hits, scores, w)
        before = evaluate_rankings(collection.qrels, first, [METRIC]).means[METRIC]
        by_weight = {weight_key(w): round(evaluate_rankings(collection.qrels, runs[w], [METRIC]).means[METRIC], 4)
                     for w in weights}
        after = by_weight[weight_key(1.0)]
        results[name] = {"first_stage": round(before, 4), "reranked": after, "delta": round(after - before, 4),
                         "mixed": by_weight}
        logger.info("%s/%s %s: nDCG@10 %.4f -> %.4f; by cross-encoder share %s", collection.name, split, name,
                    before, after, by_weight)
    return {"collection": collection.name, "split": split, "queries": len(qids),
            "query_subset": query_ids is not None or collection.subset_of is not None, "top_k": top_k,
            "results": results}
