"""Hybrid first stage (``retriever.type: hybrid``): dense and BM25 lists fused by reciprocal rank.

Reciprocal-rank fusion (Cormack et al., 2009) scores each chunk by
``sum_i weight_i / (rrf_k + rank_i)`` over the lists it appears in; it needs
no score calibration between cosine and BM25, which live on different scales.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import NonNegativeFloat, PositiveInt, model_validator

from pipeline.filters import Filter
from pipeline.params import StageParams
from pipeline.retrievers.bm25 import BM25Retriever, LexicalParams
from pipeline.retrievers.dense import DenseRetriever
from pipeline.retrievers.fusion import fuse, reciprocal_rank_fusion  # noqa: F401 - re-exported
from pipeline.types import Hit


class FusionWeights(StageParams):
    dense: NonNegativeFloat = 1.0
    bm25: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _not_all_zero(self) -> FusionWeights:
        if self.dense == 0 and self.bm25 == 0:
            raise ValueError("at least one weight must be > 0")
        return self


class HybridRetriever:
    """Dense top-``depth`` and BM25 top-``depth``, fused by weighted RRF, first ``top_k`` kept."""

    class Params(StageParams):
        top_k: PositiveInt = 50
        depth: PositiveInt = 100  # candidates taken from each retriever before fusion
        rrf_k: PositiveInt = 60
        fusion: Literal["rrf", "dbsf"] = "rrf"  # dbsf: distribution-based score fusion (retrievers/fusion.py)
        weights: FusionWeights = FusionWeights()
        bm25: LexicalParams = LexicalParams()

    requires = ("embedder", "index")

    def __init__(self, params: Params, *, embedder, index) -> None:
        self.params = params
        depth = max(params.depth, params.top_k)
        self.dense = DenseRetriever(DenseRetriever.Params(top_k=depth), embedder=embedder, index=index)
        self.bm25 = BM25Retriever(BM25Retriever.Params(top_k=depth, **params.bm25.model_dump()), index=index)

    def load(self) -> HybridRetriever:
        """Load the query embedder and build (or fetch) the BM25 index now."""
        self.dense.load()
        self.bm25.load()
        return self

    def search(
        self, queries: Sequence[str], top_k: int | None = None, timings: dict[str, float] | None = None,
        *, filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """One fused list of at most ``top_k`` hits per query (both lists restricted by ``filter``).

        When ``timings`` is given, seconds are added to ``embed`` and ``search`` (dense),
        ``bm25`` and ``fuse``.
        """
        top_k = top_k or self.params.top_k
        depth = max(self.params.depth, top_k)
        dense = self.dense.search(queries, depth, timings, filter=filter)
        lexical = self.bm25.search(queries, depth, timings, filter=filter)
        start = time.perf_counter()
        weights = (self.params.weights.dense, self.params.weights.bm25)
        fused = [
            fuse(self.params.fusion, (d, b), weights, rrf_k=self.params.rrf_k, top_k=top_k, names=("dense", "bm25"))
            for d, b in zip(dense, lexical)
        ]
        if timings is not None:
            timings["fuse"] = timings.get("fuse", 0.0) + time.perf_counter() - start
        return fused
