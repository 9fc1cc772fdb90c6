"""Plain result types shared by the stages (frozen dataclasses, no validation cost)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Document:
    """One document read from the corpus, before chunking."""

    doc_id: str
    text: str
    title: str = ""
    source: str = ""

    @property
    def full_text(self) -> str:
        """``title + " " + text``, the form published benchmarks encode."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Chunk:
    """A span of a document: what gets embedded, stored and retrieved.

    ``position`` is the chunk's index within its document (0-based);
    ``start``/``end`` are character offsets into ``Document.full_text``.
    """

    chunk_id: str
    doc_id: str
    text: str
    source: str
    position: int
    start: int
    end: int
    title: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    """A scored chunk in a ranked list.

    ``rank`` is 1-based and ``score`` is the score of the stage that produced
    the list; ``retrieval_rank``/``retrieval_score`` keep the first stage's
    view so a reranked list can show how far each hit moved.
    """

    chunk_id: str
    doc_id: str
    text: str
    source: str
    position: int
    score: float
    rank: int
    retrieval_score: float
    retrieval_rank: int
    title: str = ""

    @property
    def rank_change(self) -> int:
        """Places gained (positive) or lost (negative) against the first stage."""
        return self.retrieval_rank - self.rank


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What :meth:`pipeline.Pipeline.ask` returns.

    ``retrieved`` is the first stage's list (``top_k`` long), ``reranked`` the
    reranker's (``top_n`` long) or None when the reranker is disabled, and
    ``timings`` holds seconds per stage (``embed``, ``search``, ``retrieve``,
    ``rerank``, ``total``).
    """

    query: str
    retrieved: list[Hit]
    reranked: list[Hit] | None
    top_n: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hits(self) -> list[Hit]:
        """The context to hand to a generator: the reranked list, or the first ``top_n`` retrieved."""
        return self.reranked if self.reranked is not None else self.retrieved[: self.top_n]
