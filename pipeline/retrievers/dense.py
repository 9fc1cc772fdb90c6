"""Dense first stage (``retriever.type: dense``): embed the query, search the vector index."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import PositiveInt

from pipeline.config import StageParams
from pipeline.registry import register
from pipeline.types import Hit


@register("retriever", "dense")
class DenseRetriever:
    """Cosine top-k over the index: queries are encoded by the same embedder as the chunks."""

    class Params(StageParams):
        top_k: PositiveInt = 50

    def __init__(self, params: Params, *, embedder, index) -> None:
        self.params = params
        self.embedder = embedder
        self.index = index  # an IndexBundle

    def search(
        self, queries: Sequence[str], top_k: int | None = None, timings: dict[str, float] | None = None
    ) -> list[list[Hit]]:
        """One ranked list of at most ``top_k`` hits per query (fewer when the index is smaller).

        When ``timings`` is given, seconds spent in ``embed`` and ``search`` are added to it.
        """
        top_k = top_k or self.params.top_k
        start = time.perf_counter()
        vectors = self.embedder.encode_queries(queries)
        embedded = time.perf_counter()
        scores, ids = self.index.vectors.search(vectors, top_k)
        found = self.index.chunks.get(sorted({int(i) for i in ids.ravel() if i >= 0}))
        if timings is not None:
            timings["embed"] = timings.get("embed", 0.0) + embedded - start
            timings["search"] = timings.get("search", 0.0) + time.perf_counter() - embedded
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for score, idx in zip(row_scores, row_ids):
                chunk = found.get(int(idx))
                if chunk is None:
                    continue
                rank = len(hits) + 1
                hits.append(
                    Hit(chunk.chunk_id, chunk.doc_id, chunk.text, chunk.source, chunk.position,
                        float(score), rank, float(score), rank, chunk.title)
                )
            results.append(hits)
        return results
