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


MIX_MODES = ("minmax", "score")


def mix_scores(
    reranker: Sequence[float], first_stage: Sequence[float], weight: float, mode: str = "minmax"
) -> np.ndarray:
    """``weight * r + (1 - weight) * minmax(first_stage)`` over one query's candidates.

    The first stage's scores (a cosine, a BM25 or fused score) are min-max scaled per query onto
    0..1. ``mode`` says what ``r`` is: ``"minmax"`` scales the reranker's scores the same way, so
    the reranker always spreads its share over the whole 0..1 range, however unsure it is;
    ``"score"`` uses its (calibrated, 0..1) scores as they are, so a reranker that gives every
    candidate about the same probability barely moves the first stage's order and a confident one
    moves it a lot. ``weight`` 1 returns the reranker's scores unchanged. Pick it on held-out
    queries, never on a test split.

    Example:
        >>> mix_scores([0.9, 0.1, 0.5], [0.2, 0.8, 0.5], 0.5).round(3).tolist()
        [0.5, 0.5, 0.5]
        >>> mix_scores([0.03, 0.01, 0.02], [0.2, 0.8, 0.5], 0.5, mode="score").astype(float).round(3).tolist()
        [0.015, 0.505, 0.26]
    """
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode must be one of {', '.join(MIX_MODES)}, got {mode!r}")
    scores = np.asarray(reranker, dtype=np.float32)
    if weight >= 1.0 or scores.size == 0:
        return scores
    if len(first_stage) != len(scores):
        raise ValueError(f"got {len(scores)} reranker scores but {len(first_stage)} first-stage scores")
    own = min_max(scores) if mode == "minmax" else scores
    return weight * own + (1.0 - weight) * min_max(np.asarray(first_stage, dtype=np.float32))


def rank_by_scores(hits: Sequence[Hit], scores: Sequence[float], top_n: int | None = None) -> list[Hit]:
    """New hits sorted by ``scores`` (ties keep the first stage's order), first ``top_n`` kept (all when None)."""
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].rank))
    if top_n is not None:
        order = order[:top_n]
    return [replace(hits[i], score=float(scores[i]), rank=rank) for rank, i in enumerate(order, start=1)]
