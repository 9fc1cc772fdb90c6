"""The stage contract: what each kind of stage must provide, written once.

A stage is a class registered under a short ``type:`` name (see
:mod:`pipeline.registry`). Every stage follows the same rules:

* **A nested ``Params`` model.** A pydantic model derived from
  :class:`pipeline.params.StageParams`; the config loader validates the YAML
  section with it, so a typo or a wrong value fails at load time, not at the
  first query.
* **A light constructor.** ``__init__(params, ...)`` only stores settings (and
  the stages it is handed); models, indexes and files are read in ``load()``
  or on first use, so a config can be validated in milliseconds.
* **An explicit ``load()``.** It loads whatever the stage needs now rather than
  on the first call, is safe to call twice, and returns the stage. The
  pipeline calls it under a lock, so a server loads each model once.
* **Errors from the project's family** (:mod:`pipeline.errors`): a missing
  model is :class:`~pipeline.errors.ModelNotFoundError`, a bad value
  :class:`~pipeline.errors.ConfigError`; anything else a stage raises while
  running is wrapped in :class:`~pipeline.errors.StageError` by the pipeline.

Constructors by kind (what :func:`pipeline.pipeline.build_stage` passes):

=========  =====================================================
embedder   ``cls(params)``
index      ``cls(params)``
retriever  ``cls(params, **{name: ... for name in cls.requires})``
reranker   ``cls(params)`` (a :class:`Scorer`; ``Params`` from ``RerankerParams``)
generator  ``cls(params, **{name: ... for name in cls.requires})``
=========  =====================================================

``docs/architecture.md`` shows how to add a stage, with a worked example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.types import DEFAULT_SCORE_OPTIONS, Answer, Hit, ScoreOptions


@runtime_checkable
class Embedder(Protocol):
    """Text to vectors: the same model for the chunks at build time and the queries at ask time."""

    params: Any

    def load(self) -> Embedder:
        """Load the model now."""

    @property
    def dimension(self) -> int:
        """Length of each vector."""

    @property
    def max_length(self) -> int:
        """Tokens the model reads per text, special tokens included (chunks are sized to fit)."""

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer whose tokens ``chunking.size`` counts."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), dimension)``; row i is text i."""

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32 ``(len(texts), dimension)``; row i is text i."""


@runtime_checkable
class VectorIndex(Protocol):
    """Vectors by row id, searched by inner product (cosine on normalized vectors).

    Row ``i`` is chunk ``i`` of the chunk store, so an index holds no text.
    """

    params: Any

    @property
    def ntotal(self) -> int:
        """Vectors held."""

    def describe(self) -> dict[str, Any]:
        """What the index depends on; goes into the manifest and the evaluation cache key."""

    def build(self, vectors: np.ndarray, chunks: Sequence[Any] | None = None) -> None:
        """Create the index from scratch; row ``i`` of ``vectors`` gets id ``i``."""

    def save(self, directory: Path) -> None:
        """Write the index into a version folder being built."""

    def load(self, directory: Path) -> None:
        """Read the index of a published version folder."""

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(n_queries, k)``, best first; ids of missing rows are -1."""

    @staticmethod
    def release_version(version: Path) -> None:
        """Free what this backend keeps *outside* ``version`` for it (a server-side collection)
        before the folder is deleted; a no-op for backends that live in the folder."""


@runtime_checkable
class Retriever(Protocol):
    """The first stage: a query in, ``top_k`` ranked hits out.

    ``requires`` names the stages the constructor takes as keyword arguments:
    ``("embedder", "index")`` for dense search, ``("index",)`` for BM25, which
    then never loads the embedding model.
    """

    params: Any
    requires: tuple[str, ...]

    def load(self) -> Retriever:
        """Load models and build derived structures (a BM25 index) now."""

    def search(
        self, queries: Sequence[str], top_k: int | None = None, timings: dict[str, float] | None = None
    ) -> list[list[Hit]]:
        """One ranked list per query, at most ``top_k`` (default: ``params.top_k``) hits each.

        ``rank`` and ``retrieval_rank`` are 1-based and equal; ``score`` and ``retrieval_score``
        are the stage's own. When ``timings`` is given, seconds spent are added to it by step
        (``embed``, ``search``, ``bm25``, ``fuse``).
        """


@runtime_checkable
class Scorer(Protocol):
    """Scores (query, passage) pairs: the part of a reranker that runs a model, and all a caller needs.

    A reranker stage is a scorer; so is anything that adds one concern in front of one (the
    server's micro-batching queue, the evaluator's score cache, training's model in memory): it
    implements this protocol by forwarding, never by copying a method of the stage it wraps.
    Ranking is not a scorer's business: :func:`pipeline.scoring.rank_hits` turns the scores into
    a list with the config's settings. Only :meth:`score` is required; a class that subclasses
    ``Scorer`` inherits the defaults of the other methods.
    """

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to ``query``: float32 in 0..1, in input order.

        NaN for a pair the scorer chose not to score (it keeps its first-stage place when ranked);
        the reason is :meth:`skip_note`'s.
        """

    def score_many(
        self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> list[np.ndarray]:
        """:meth:`score` for several ``(query, passages)`` requests, one array each, in order.

        ``options`` (raw scores, long passages) are honoured where the scorer can; this default scores
        each request with :meth:`score` and ignores them (no model window, no raw score apart from the
        score). A model scorer overrides it to batch all pairs together.
        """
        return [np.asarray(self.score(query, passages), dtype=np.float32) for query, passages in requests]

    def skip_note(self, query: str, passages: Sequence[str]) -> str | None:
        """One line saying which passages :meth:`score` leaves unscored and why, or None (the default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What scores: at least ``type``; a model scorer adds ``model`` and its ``max_length`` in tokens."""
        return {"type": type(self).__name__}


@runtime_checkable
class Reranker(Scorer, Protocol):
    """The second stage: a :class:`Scorer` built from a ``reranker:`` section.

    Its ``Params`` derive from :class:`pipeline.params.RerankerParams` (``top_n``, ``weight``,
    ``mix``): the pipeline ranks the candidates with :func:`pipeline.scoring.rank_hits` and those
    settings, the first stage's scores mixed in.
    """

    params: Any

    def load(self) -> Reranker:
        """Load the model now."""


@runtime_checkable
class Generator(Protocol):
    """The optional last stage: an answer to the query from the ``top_n`` passages, with citations.

    ``requires`` names the stages the constructor takes: ``("embedder",)``, used to check the
    model's citations and attribute uncited sentences (``pipeline.generators.citations``).
    """

    params: Any
    requires: tuple[str, ...]

    def load(self) -> Generator:
        """Load the model (or make the client) now."""

    def generate(self, query: str, hits: Sequence[Hit], max_tokens: int | None = None) -> Answer:
        """Answer ``query`` from ``hits``, numbered ``[1]..[n]`` in the prompt in their order.

        ``max_tokens`` lowers the answer's length limit for this call (the config's ``max_tokens`` caps it).

        Citations outside ``1..n`` are dropped (``Answer.dropped``); a prompt that cannot fit
        the model's window is a ``ConfigError``; an endpoint failure a ``GeneratorError``.
        """

    def stream(self, query: str, hits: Sequence[Hit], max_tokens: int | None = None) -> Iterator[str | Answer]:
        """Like :meth:`generate`, but yields the reply's text pieces as they arrive, then the ``Answer``."""
