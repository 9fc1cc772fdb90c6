"""Fusing the ranked lists of several first stages into one (``retriever.fusion`` of the hybrid retriever).

Two methods, both weighted per list:

* ``rrf``, reciprocal-rank fusion (Cormack et al., 2009): ``sum_i w_i / (k + rank_i)``. Uses ranks
  only, so a weak list moves a strong one's order as much as another strong list would.
* ``dbsf``, distribution-based score fusion (as in Qdrant): each list's scores are scaled by their
  own spread, ``(s - (mean - 3 sd)) / (6 sd)`` clipped to 0..1, and summed (0 where a list lacks the
  hit). It keeps the score gaps that RRF throws away: a hit far above the rest of its list (an
  exact keyword match in BM25, say) scores near 1, while a list without such outliers (a retriever
  unsure of its candidates) gives its top hits middling values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from pipeline.types import Hit

FUSIONS = ("rrf", "dbsf")


def _fused_list(
    scores: dict[str, float], first: dict[str, tuple[int, int, Hit]], top_k: int | None,
    rankings: Sequence[Sequence[Hit]], names: Sequence[str] | None,
) -> list[Hit]:
    order = sorted(scores, key=lambda cid: (-scores[cid], first[cid][0], first[cid][1]))
    if top_k is not None:
        order = order[:top_k]
    places: dict[str, list[tuple[str, int, float]]] = {}
    for name, ranking in zip(names or (), rankings):  # where each list had it, for explain
        for rank, hit in enumerate(ranking, start=1):
            places.setdefault(hit.chunk_id, []).append((name, rank, float(hit.retrieval_score)))
    return [
        replace(first[cid][2], score=scores[cid], rank=rank, retrieval_score=scores[cid], retrieval_rank=rank,
                fused_from=tuple(places.get(cid, ())))
        for rank, cid in enumerate(order, start=1)
    ]


def _check(rankings: Sequence[Sequence[Hit]], weights: Sequence[float]) -> None:
    if len(rankings) != len(weights):
        raise ValueError(f"got {len(rankings)} rankings but {len(weights)} weights")


def _best_places(rankings: Sequence[Sequence[Hit]]) -> dict[str, tuple[int, int, Hit]]:
    """chunk_id -> (best rank, index of that list, its hit): the tie-break and the hit that is kept."""
    first: dict[str, tuple[int, int, Hit]] = {}
    for list_index, ranking in enumerate(rankings):
        for rank, hit in enumerate(ranking, start=1):
            best = first.get(hit.chunk_id)
            if best is None or rank < best[0]:
                first[hit.chunk_id] = (rank, list_index, hit)
    return first


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]], weights: Sequence[float], k: int = 60, top_k: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Hit]:
    """Fuse ranked lists of hits (matched by ``chunk_id``) by weighted RRF, ``sum_i w_i / (k + rank_i)``.

    ``k`` flattens the difference between top and lower ranks; ``top_k`` keeps that many (all when None).
    ``names`` (one per list) fill each fused hit's ``fused_from`` with its rank and score in each list.

    Returns:
        New hits sorted by fused score (ties: the better best rank, then the earlier list); ``score``,
        ``retrieval_score`` and the ranks are the fused ones.

    Example:
        >>> a, b = _hit("x"), _hit("y")
        >>> [(h.chunk_id, round(h.score, 4)) for h in reciprocal_rank_fusion([[a, b], [b]], [1.0, 1.0], k=60)]
        [('y', 0.0325), ('x', 0.0164)]
    """
    _check(rankings, weights)
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + weight / (k + rank)
    return _fused_list(fused, _best_places(rankings), top_k, rankings, names)


def distribution_fusion(
    rankings: Sequence[Sequence[Hit]], weights: Sequence[float], top_k: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Hit]:
    """Fuse ranked lists by distribution-based score fusion (see the module docstring).

    Each list's ``retrieval_score``s are scaled by ``(s - (mean - 3 sd)) / (6 sd)``, clipped to 0..1
    (a list of equal scores scales to 0.5), and the weighted scaled scores are summed per chunk.

    Example:
        >>> a = [_hit("x", 0.9), _hit("y", 0.5), _hit("z", 0.4)]
        >>> b = [_hit("y", 12.0), _hit("z", 11.9)]
        >>> [h.chunk_id for h in distribution_fusion([a, b], [1.0, 1.0])]
        ['y', 'x', 'z']
    """
    _check(rankings, weights)
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        if not ranking:
            continue
        scores = np.array([hit.retrieval_score for hit in ranking], dtype=np.float64)
        mean, sd = float(scores.mean()), float(scores.std())
        scaled = np.clip((scores - (mean - 3 * sd)) / (6 * sd), 0.0, 1.0) if sd > 0 else np.full(scores.shape, 0.5)
        for hit, value in zip(ranking, scaled):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + weight * float(value)
    return _fused_list(fused, _best_places(rankings), top_k, rankings, names)


def fuse(
    method: str, rankings: Sequence[Sequence[Hit]], weights: Sequence[float], *, rrf_k: int = 60,
    top_k: int | None = None, names: Sequence[str] | None = None,
) -> list[Hit]:
    """Fuse with ``method`` (``rrf`` or ``dbsf``); ``names`` label the lists in each hit's ``fused_from``."""
    if method == "rrf":
        return reciprocal_rank_fusion(rankings, weights, rrf_k, top_k, names)
    if method == "dbsf":
        return distribution_fusion(rankings, weights, top_k, names)
    raise ValueError(f"unknown fusion {method!r}; expected one of {', '.join(FUSIONS)}")


def _hit(chunk_id: str, score: float = 0.0) -> Hit:  # for the docstring examples
    return Hit(chunk_id, chunk_id, "", "", 0, score, 1, score, 1)
