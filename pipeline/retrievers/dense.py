"""Dense first stage (``retriever.type: dense``): embed the query, search the vector index."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import PositiveInt

from pipeline.filters import Filter
from pipeline.params import StageParams
from pipeline.retrievers.hits import hits_from_rows, row_ids
from pipeline.types import Hit


class DenseRetriever:
    """Cosine top-k over the index: queries are encoded by the same embedder as the chunks."""

    class Params(StageParams):
        top_k: PositiveInt = 50

    requires = ("embedder", "index")

    def __init__(self, params: Params, *, embedder, index) -> None:
        self.params = params
        self.embedder = embedder
        self.index = index  # an IndexBundle

    def load(self) -> DenseRetriever:
        """Load the query embedder now."""
        self.embedder.load()
        return self

    def search(
        self, queries: Sequence[str], top_k: int | None = None, timings: dict[str, float] | None = None,
        *, filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """One ranked list of at most ``top_k`` hits per query (fewer when the index is smaller).

        ``filter`` restricts the search to matching chunks inside the vector store (still ``top_k``
        hits when that many match); one that matches nothing raises :class:`~pipeline.filters.NoMatchError`.
        When ``timings`` is given, seconds spent in ``embed`` and ``search`` are added to it.
        """
        top_k = top_k or self.params.top_k
        rows = self.index.chunks.matching_rows(filter) if filter else None
        start = time.perf_counter()
        vectors = self.embedder.encode_queries(queries)
        embedded = time.perf_counter()
        if rows is None:
            scores, ids = self.index.vectors.search(vectors, top_k)
        else:
            scores, ids = self.index.vectors.search(vectors, top_k, rows=rows)
        found = self.index.chunks.get(row_ids(ids))
        if timings is not None:
            timings["embed"] = timings.get("embed", 0.0) + embedded - start
            timings["search"] = timings.get("search", 0.0) + time.perf_counter() - embedded
        return [hits_from_rows(zip(row_scores, row), found) for row_scores, row in zip(scores, ids)]
