"""Turn index rows (score, row id) into :class:`Hit` lists; shared by the first stages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipeline.types import Chunk, Hit


def hits_from_rows(rows: Iterable[tuple[float, int]], chunks: dict[int, Chunk]) -> list[Hit]:
    """Ranked hits for one query from ``(score, row id)`` pairs in rank order.

    Rows whose id is not in ``chunks`` (FAISS pads with -1) are skipped; ranks stay contiguous.
    """
    hits: list[Hit] = []
    for score, idx in rows:
        chunk = chunks.get(int(idx))
        if chunk is None:
            continue
        rank = len(hits) + 1
        hits.append(
            Hit(chunk.chunk_id, chunk.doc_id, chunk.text, chunk.source, chunk.position,
                float(score), rank, float(score), rank, chunk.title, chunk.page, chunk.headings, chunk.metadata)
        )
    return hits


def row_ids(ids: Iterable[Sequence[int]]) -> list[int]:
    """The distinct valid (>= 0) row ids of a batch of result rows, sorted."""
    return sorted({int(i) for row in ids for i in row if i >= 0})
