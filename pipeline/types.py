"""Plain result types shared by the stages (frozen dataclasses, no validation cost)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Section:
    """A structural part of a document: a page of a PDF, or the text under one heading.

    ``page`` is 1-based (None when the format has no pages); ``headings`` is the heading path
    from the top level down (``("Installation", "Linux")``), empty above the first heading.
    """

    text: str
    page: int | None = None
    headings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Document:
    """One document read from the corpus, before chunking.

    A reader that knows the document's structure fills ``sections`` (then ``text`` is their texts
    joined by blank lines, see :func:`document_from_sections`), so chunks can follow pages and
    headings; ``metadata`` holds what the reader or the JSONL line says about the document
    (``format``, ``lang``, ...), carried into every chunk and usable in filters.
    """

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    sections: tuple[Section, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def full_text(self) -> str:
        """``title + " " + text``, the form published benchmarks encode."""
        return f"{self.title} {self.text}" if self.title else self.text


SECTION_SEPARATOR = "\n\n"


def document_from_sections(
    doc_id: str, sections: list[Section], *, title: str = "", source: str = "", metadata: dict[str, Any] | None = None
) -> Document:
    """A document whose text is its (non-empty) sections' texts joined by a blank line."""
    kept = tuple(s for s in sections if s.text.strip())
    return Document(doc_id=doc_id, text=SECTION_SEPARATOR.join(s.text for s in kept), title=title, source=source,
                    sections=kept, metadata=dict(metadata or {}))


@dataclass(frozen=True, slots=True)
class Chunk:
    """A span of a document: what gets embedded, stored and retrieved.

    ``position`` is the chunk's index within its document (0-based);
    ``start``/``end`` are character offsets into ``Document.full_text``.
    ``page`` (1-based, PDF) and ``headings`` (the heading path) say where in the document it
    is; ``metadata`` is the document's.
    """

    chunk_id: str
    doc_id: str
    text: str
    source: str
    position: int
    start: int
    end: int
    title: str = ""
    page: int | None = None
    headings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A scored chunk in a ranked list.

    ``rank`` is 1-based and ``score`` is the score of the stage that produced
    the list; ``retrieval_rank``/``retrieval_score`` keep the first stage's
    view so a reranked list can show how far each hit moved. ``page``,
    ``headings`` and ``metadata`` are the chunk's; ``positions`` lists every chunk
    position of a passage that context assembly merged from neighbouring chunks
    (empty for a single chunk, whose position is ``position``). ``fused_from`` is, for a hit of a
    hybrid first stage, ``(retriever, rank, score)`` for each fused list that found it (empty otherwise;
    shown by ``explain``, not in a hit's JSON).
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
    page: int | None = None
    headings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    positions: tuple[int, ...] = ()
    fused_from: tuple[tuple[str, int, float], ...] = ()

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
    ``rerank``, ``generate``, ``total``). ``answer`` is the generator's answer when one
    was asked for; ``answer_error`` the one-line reason when generating failed (the two
    lists are still there).
    """

    query: str
    retrieved: list[Hit]
    reranked: list[Hit] | None
    top_n: int
    timings: dict[str, float] = field(default_factory=dict)
    answer: Answer | None = None
    answer_error: str | None = None
    notes: tuple[str, ...] = ()  # what a stage wants the reader to know, e.g. candidates the reranker skipped
    explanation: Explanation | None = None  # per candidate, why it is where it is (``ask(explain=True)``)

    @property
    def hits(self) -> list[Hit]:
        """The context to hand to a generator: the reranked list, or the first ``top_n`` retrieved."""
        return self.reranked if self.reranked is not None else self.retrieved[: self.top_n]


@dataclass(frozen=True, slots=True)
class Citation:
    """One passage cited by one sentence of an answer.

    ``number`` is the passage's ``[n]`` in the prompt (1-based, an index into
    :attr:`Answer.passages`). ``origin`` is ``"model"`` when the model wrote the
    marker, ``"attributed"`` when the pipeline added it because the sentence is
    similar enough to the passage. ``similarity`` is the cosine of sentence and
    passage under the pipeline's embedder (None when attribution is off), and
    ``supported`` says whether it reaches the attribution threshold (a model's
    citation below it is kept, and marked).
    """

    number: int
    sentence: int
    origin: str
    similarity: float | None = None
    supported: bool = True


@dataclass(frozen=True, slots=True)
class Answer:
    """What a generator returns: the text, its checked citations, and what it cost.

    ``text`` is the model's answer with out-of-range markers removed (they are listed
    in ``dropped``); ``sentences`` is that text split into sentences, which
    ``Citation.sentence`` indexes. ``passages`` are the hits the prompt numbered
    ``[1]..[n]`` (after the token budget: ``trimmed`` counts passages cut short or left
    out to fit the model's window). ``timings`` holds seconds for ``first_token``,
    ``generate`` and ``attribute``.
    """

    text: str
    sentences: tuple[str, ...]
    citations: tuple[Citation, ...]
    dropped: tuple[int, ...]
    passages: tuple[Hit, ...]
    generator: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    trimmed: int = 0
    finish_reason: str | None = None

    @property
    def cited(self) -> list[int]:
        """The passage numbers cited by any sentence, in first-cited order, each once."""
        return list(dict.fromkeys(c.number for c in self.citations))

    @property
    def cited_passages(self) -> list[Hit]:
        """The passages behind :attr:`cited`, in the same order."""
        return [self.passages[n - 1] for n in self.cited]


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    """How a scorer treats one request's passages (what the HTTP rerank APIs let callers choose).

    ``raw``: the model's raw score (a cross-encoder's logit) instead of the calibrated 0..1 one.
    ``long``: what to do with a passage longer than the model's window: ``"truncate"`` keeps what
    fits (from ``side``: ``"right"`` cuts the end, ``"left"`` the beginning), ``"windows"`` scores
    overlapping windows of the model's length and gives the passage its best window's score,
    ``"error"`` refuses it (:class:`~pipeline.errors.InputError`); None: the scorer's own setting.
    ``max_tokens``: each passage is first cut to this many tokens (None: no cut).

    A scorer without a token window (a toy, or a remote API) may ignore ``long`` and ``max_tokens``.
    """

    raw: bool = False
    long: str | None = None
    side: str = "right"
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.long not in (None, "truncate", "windows", "error"):
            raise ValueError(f"long must be truncate, windows or error, got {self.long!r}")
        if self.side not in ("right", "left"):
            raise ValueError(f"side must be right or left, got {self.side!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens!r}")


DEFAULT_SCORE_OPTIONS = ScoreOptions()


@dataclass(frozen=True, slots=True)
class CandidateExplanation:
    """Why one first-stage candidate ended where it did (``Pipeline.ask(explain=True)``).

    ``retrievers``: for a hybrid first stage, ``(retriever, rank, score)`` per fused list that found it,
    and ``first_stage_score`` is the fused score. ``reranker_raw`` / ``reranker_score``: the model's raw
    score (a logit) and its calibrated 0..1 score, NaN when the scorer did not score the pair
    (``skipped``: the language guard), None without a reranker. ``mixed``: the score it was ranked by
    (the reranker's share ``weight`` mixed with the first stage's), ``rerank_rank`` its place in that
    ranking of all candidates, ``final_rank`` its place among the ``top_n`` passages (a merged passage's
    rank for a chunk merged into it), ``reason`` why it is not in them by itself: ``top_n`` (ranked below),
    ``per_document_cap`` (its document already had ``max_chunks_per_doc`` chunks above it) or ``merged``
    (joined to a neighbouring chunk's passage); None when it is a passage of the final list.
    """

    chunk_id: str
    doc_id: str
    source: str
    first_stage_rank: int
    first_stage_score: float
    retrievers: tuple[tuple[str, int, float], ...]
    reranker_raw: float | None
    reranker_score: float | None
    skipped: bool
    mixed: float | None
    rerank_rank: int | None
    final_rank: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """The settings a ranking used and one :class:`CandidateExplanation` per candidate, in first-stage order.

    ``filter``: the metadata filter the first stage applied (chunks it excluded were never candidates).
    ``weight`` and ``mix`` are None when no reranker ran.
    """

    top_k: int
    top_n: int
    weight: float | None
    mix: str | None
    max_chunks_per_doc: int | None
    merge_neighbours: bool
    filter: str | None
    candidates: tuple[CandidateExplanation, ...]
