"""The one place where a reranker's scores are mixed with the first stage's and turned into a ranking.

``weight`` is the reranker's share everywhere (stage, evaluation, training, configs):
``1.0`` ranks by the reranker alone, ``0.0`` keeps the first stage's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from pipeline.types import Hit


def min_max(values: np.ndarray) -> np.ndarray:
    """Scale to 0..1 over the candidates of one query; a constant list scales to ones."""
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        return values
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def mix_scores(reranker: Sequence[float], first_stage: Sequence[float], weight: float) -> np.ndarray:
    """``weight * minmax(reranker) + (1 - weight) * minmax(first_stage)`` over one query's candidates.

    Min-max scaling per query puts a cosine, a BM25 or fused score and a sigmoid on one 0..1
    scale. ``weight`` 1 returns the reranker's scores unchanged. Pick it on held-out queries,
    never on a test split.

    Example:
        >>> mix_scores([0.9, 0.1, 0.5], [0.2, 0.8, 0.5], 0.5).round(3).tolist()
        [0.5, 0.5, 0.5]
    """
    scores = np.asarray(reranker, dtype=np.float32)
    if weight >= 1.0 or scores.size == 0:
        return scores
    if len(first_stage) != len(scores):
        raise ValueError(f"got {len(scores)} reranker scores but {len(first_stage)} first-stage scores")
    return weight * min_max(scores) + (1.0 - weight) * min_max(np.asarray(first_stage, dtype=np.float32))


def rank_by_scores(hits: Sequence[Hit], scores: Sequence[float], top_n: int | None = None) -> list[Hit]:
    """New hits sorted by ``scores`` (ties keep the first stage's order), first ``top_n`` kept (all when None)."""
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].rank))
    if top_n is not None:
        order = order[:top_n]
    return [replace(hits[i], score=float(scores[i]), rank=rank) for rank, i in enumerate(order, start=1)]
