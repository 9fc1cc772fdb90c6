"""The one place where a reranker's scores are mixed with the first stage's and turned into a ranking.

Scoring and ranking are separate concerns: a scorer (:class:`pipeline.protocols.Scorer`) gives each
(query, passage) pair a score, and :func:`rank_hits` turns the candidates and those scores into the
final list, a pure function of (hits, scores, :class:`RankSettings`). The settings are the config's
(``reranker.top_n``, ``weight``, ``mix``), never the scorer's, so configs that share one loaded model
(the server, the evaluator) each rank with their own.

``weight`` is the reranker's share everywhere (stage, evaluation, training, configs):
``1.0`` ranks by the reranker alone, ``0.0`` keeps the first stage's order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.types import CandidateExplanation, Explanation, Hit


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


@dataclass(frozen=True, slots=True)
class RankSettings:
    """How scores become a ranking: keep ``top_n``, the reranker's share ``weight``, the ``mix`` mode."""

    top_n: int
    weight: float = 1.0
    mix: str = "score"

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n must be positive, got {self.top_n!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be from 0 to 1, got {self.weight!r}")
        if self.mix not in MIX_MODES:
            raise ValueError(f"mix mode must be one of {', '.join(MIX_MODES)}, got {self.mix!r}")

    @classmethod
    def from_params(cls, params: Any, top_n: int | None = None, weight: float | None = None) -> RankSettings:
        """A reranker section's settings (a :class:`pipeline.params.RerankerParams`), with per-call overrides."""
        return cls(params.top_n if top_n is None else top_n, params.weight if weight is None else weight, params.mix)


def passage_with_title(hit: Hit) -> str:
    """``hit.text`` with its document's title and heading path in front, the parts its start does not hold.

    A chunk from the middle of a document often never names its subject ("...which brings diffuse bone
    pain" under "Symptoms and Causes of Vitamin D Deficiency"); a reranker reading it alone cannot tell
    it from the same symptoms of another deficiency. Parts are joined with " > " and set on a line
    before the text; a part the text's start already holds (a first chunk, a whole document) is left out.

    Example:
        >>> hit = Hit("c", "d", "which brings bone pain", "", 1, 0.5, 1, 0.5, 1, title="Vitamin D Deficiency")
        >>> passage_with_title(hit)
        'Vitamin D Deficiency\\nwhich brings bone pain'
        >>> passage_with_title(replace(hit, text="Vitamin D Deficiency often develops slowly"))
        'Vitamin D Deficiency often develops slowly'
    """
    start = " ".join(hit.text[:400].split()).casefold()
    parts: list[str] = []
    for part in (hit.title, *hit.headings):
        part = " ".join(part.split())
        if part and part.casefold() not in start and part not in parts:
            parts.append(part)
    return f"{' > '.join(parts)}\n{hit.text}" if parts else hit.text


def reranker_texts(hits: Sequence[Hit], params: Any) -> list[str]:
    """What a reranker reads of ``hits``: the first ``params.depth`` (all when None), titled when ``params.title``."""
    head = list(hits)[: params.depth]
    return [passage_with_title(hit) for hit in head] if params.title else [hit.text for hit in head]


def rank_hits(hits: Sequence[Hit], scores: Sequence[float], settings: RankSettings) -> list[Hit]:
    """New hits ordered by reranker ``scores`` mixed with the first stage's, the first ``settings.top_n`` kept.

    ``scores[i]`` is the reranker's score of ``hits[i]``; ``retrieval_*`` fields are kept, ``score`` is the
    mixed score and ``rank`` the new place. A NaN score (a pair the scorer did not score, such as one the
    language guard kept from the model) gets weight 0: that hit keeps its place in the first stage's order,
    and the scored hits are reordered around it. A pure function: the same input gives the same list.

    Example:
        >>> hits = [Hit(f"c{i}", f"d{i}", "", "", 0, 1.0 - i / 10, i, 1.0 - i / 10, i) for i in (1, 2, 3)]
        >>> [h.chunk_id for h in rank_hits(hits, [0.1, 0.9, float("nan")], RankSettings(top_n=3))]
        ['c2', 'c1', 'c3']
    """
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) != len(hits):
        raise ValueError(f"got {len(scores)} scores for {len(hits)} hits")
    skipped = np.isnan(scores)
    if skipped.any():
        return rank_around_skipped(hits, scores, skipped, settings.weight, settings.top_n, settings.mix)
    mixed = mix_scores(scores, [hit.retrieval_score for hit in hits], settings.weight, settings.mix)
    return rank_by_scores(hits, mixed, settings.top_n)


def rank_around_skipped(
    hits: Sequence[Hit], scores: np.ndarray, skipped: np.ndarray, weight: float, top_n: int, mode: str
) -> list[Hit]:
    """Skipped hits stay at their first-stage places; the scored ones fill the other places by mixed score.

    A skipped hit's ``score`` is its min-max scaled first-stage score (weight 0).
    """
    first = mix_scores(np.zeros(len(hits), dtype=np.float32), [hit.retrieval_score for hit in hits], 0.0)
    scored = [i for i in range(len(hits)) if not skipped[i]]
    mixed = dict(zip(scored, mix_scores(scores[scored], [hits[i].retrieval_score for i in scored], weight, mode)
                     if scored else []))
    queue = iter(sorted(scored, key=lambda i: (-mixed[i], hits[i].rank)))
    slots = sorted(range(len(hits)), key=lambda i: hits[i].rank)  # places in the first stage's order
    order = [i if skipped[i] else next(queue) for i in slots][:top_n]
    return [replace(hits[i], score=float(first[i] if skipped[i] else mixed[i]), rank=rank)
            for rank, i in enumerate(order, start=1)]


def explain_candidates(
    retrieved: Sequence[Hit],
    final: Sequence[Hit],
    *,
    scores: Sequence[float] | None = None,
    raw: Sequence[float] | None = None,
    settings: RankSettings | None = None,
    top_k: int,
    top_n: int,
    max_chunks_per_doc: int | None = None,
    merge_neighbours: bool = False,
    filter: str | None = None,
) -> Explanation:
    """Why each of ``retrieved`` ended where it did in ``final`` (the passages handed on), as
    :class:`~pipeline.types.Explanation`; ``scores``/``raw``/``settings`` are the reranker's, None without one.

    The mixed score and the place in the full reranked order come from :func:`rank_hits` with the same
    settings over all candidates, so they are exactly what ranked the final list.
    """
    reranked: dict[str, Hit] = {}
    if scores is not None and settings is not None:
        full = rank_hits(retrieved, scores, replace(settings, top_n=max(len(retrieved), 1)))
        reranked = {hit.chunk_id: hit for hit in full}
    where: dict[tuple[str, int], Hit] = {}  # (doc, position) -> the final passage holding it
    for passage in final:
        for position in passage.positions or (passage.position,):
            where[(passage.doc_id, position)] = passage
    out = []
    for i, hit in enumerate(retrieved):
        ranked = reranked.get(hit.chunk_id)
        passage = where.get((hit.doc_id, hit.position))
        order = ranked.rank if ranked is not None else hit.rank
        if passage is not None:
            reason = None if passage.chunk_id == hit.chunk_id else "merged"
        else:
            reason = "per_document_cap" if max_chunks_per_doc is not None and order <= top_n else "top_n"
        score = None if scores is None else float(scores[i])
        out.append(CandidateExplanation(
            chunk_id=hit.chunk_id, doc_id=hit.doc_id, source=hit.source,
            first_stage_rank=hit.retrieval_rank, first_stage_score=float(hit.retrieval_score),
            retrievers=hit.fused_from,
            reranker_raw=None if raw is None else float(raw[i]), reranker_score=score,
            skipped=score is not None and math.isnan(score),
            mixed=None if ranked is None else float(ranked.score), rerank_rank=None if ranked is None else ranked.rank,
            final_rank=None if passage is None else passage.rank, reason=reason,
        ))
    return Explanation(
        top_k=top_k, top_n=top_n, weight=None if settings is None else settings.weight,
        mix=None if settings is None else settings.mix, max_chunks_per_doc=max_chunks_per_doc,
        merge_neighbours=merge_neighbours, filter=filter, candidates=tuple(out),
    )
