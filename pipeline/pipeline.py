"""Compose the configured stages: retrieve ``top_k``, rerank, keep ``top_n``, and optionally answer from them."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, StageConfig, load_config
from pipeline.context import assemble_context
from pipeline.errors import ConfigError, IndexMismatchError, InputError, RagError, StageError
from pipeline.filters import Filter
from pipeline.protocols import Embedder, Generator, Retriever, Scorer
from pipeline.scoring import RankSettings, explain_candidates, rank_hits, reranker_texts
from pipeline.store import IndexBundle, load_index
from pipeline.types import Answer, Explanation, Hit, PipelineResult, ScoreOptions

logger = logging.getLogger(__name__)

DEFAULT_TOP_N = 5
STAGE_ATTRIBUTES = ("embedder", "index", "retriever", "reranker", "generator")


def build_stage(stage: StageConfig, **available: Any):
    """Instantiate a configured stage (cheap: models load in ``load()`` or on first use).

    A retriever or a generator gets the stages its class ``requires`` (``embedder``, ``index``) from
    ``available``.
    """
    cls = stage.cls
    if stage.kind not in ("retriever", "generator"):
        return cls(stage.params)
    missing = [name for name in cls.requires if name not in available]
    if missing:
        raise ValueError(f"{stage.kind} {stage.type!r} needs {', '.join(missing)}")
    return cls(stage.params, **{name: available[name] for name in cls.requires})


class Pipeline:
    """Retrieve-then-rerank over a built index.

    Stages are built on first use and loaded once, under a lock, so one pipeline
    can serve queries from several threads.

    Example:
        >>> pipe = Pipeline.from_yaml("configs/offline.yaml")
        >>> result = pipe.ask("symptoms of vitamin D deficiency")
        >>> result.hits[0].source
        'health/vitamin-d-deficiency.md'
    """

    def __init__(
        self, config: PipelineConfig, index_path: str | Path | None = None, *, stages: Mapping[str, Any] | None = None
    ) -> None:
        """``stages`` optionally hands in already-built stages by name (``embedder``, ``index``,
        ``retriever``, ``reranker``) so several pipelines can share loaded models and indexes, as
        :mod:`evaluation` does; a given ``index`` is used as is (its manifest is not re-checked). A given
        ``reranker`` is any :class:`~pipeline.protocols.Scorer` with a ``load()``; the ranking settings
        (``top_n``, ``weight``, ``mix``) are always this config's.
        """
        self.config = config
        self.index_path = Path(index_path or config.index.params.path)
        self._lock = threading.RLock()
        self._loaded = False
        self._generator_loaded = False
        for name, stage in (stages or {}).items():
            if name not in STAGE_ATTRIBUTES:
                raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_ATTRIBUTES)}")
            self.__dict__[name] = stage  # fills the cached property of the same name

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: Iterable[str] = (), index_path: str | Path | None = None
    ) -> Pipeline:
        """Load and validate a YAML config (with ``key=value`` overrides) into a pipeline."""
        return cls(load_config(path, overrides), index_path)

    @cached_property
    def embedder(self) -> Embedder:
        return build_stage(self.config.embedder)

    @cached_property
    def index(self) -> IndexBundle:
        """The loaded index, checked against the config."""
        bundle = load_index(self.index_path, build_stage(self.config.index))
        embedder = self.embedder if "embedder" in self._retriever_needs else None
        check_manifest(bundle.manifest, self.config, embedder, self.index_path)
        return bundle

    @cached_property
    def retriever(self) -> Retriever:
        deps = {name: getattr(self, name) for name in self._retriever_needs}
        return build_stage(self.config.retriever, **deps)

    @cached_property
    def reranker(self) -> Scorer | None:
        """What scores the candidates: the configured reranker stage, or a scorer handed in as ``stages``
        (a server's batching queue, an evaluation cache); the config's ``reranker`` settings rank."""
        return build_stage(self.config.reranker) if self.config.reranker is not None else None

    @cached_property
    def generator(self) -> Generator | None:
        """The answer stage, or None when no ``generator:`` is configured (its embedder loads only when used)."""
        if self.config.generator is None:
            return None
        deps = {name: getattr(self, name) for name in self.config.generator.cls.requires}
        return build_stage(self.config.generator, **deps)

    @property
    def _retriever_needs(self) -> tuple[str, ...]:
        return tuple(self.config.retriever.cls.requires)

    @property
    def top_k(self) -> int:
        return self.config.retriever.params.top_k

    @property
    def top_n(self) -> int:
        return self.config.reranker.params.top_n if self.config.reranker is not None else DEFAULT_TOP_N

    @property
    def version(self) -> str:
        """The name of the index version this pipeline reads."""
        return self.index.version_dir.name

    def load(self, *, generator: bool = True) -> Pipeline:
        """Load every model and the index now rather than on the first query (once; thread-safe).

        ``generator=False`` leaves a configured generator to load on the first answer.
        """
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self.retriever.load()
                    if self.reranker is not None:
                        self.reranker.load()
                    self._loaded = True
        if generator and self.generator is not None:
            self._load_generator()
        return self

    def _load_generator(self) -> Generator:
        if self.generator is None:
            raise ConfigError(
                "no generator configured: add a 'generator:' section to the config (docs/answers.md), "
                "for example --set generator.type=local for the bundled model"
            )
        if not self._generator_loaded:
            with self._lock:
                if not self._generator_loaded:
                    self._run("generator", self.generator.load)
                    self._generator_loaded = True
        return self.generator

    def ask(
        self,
        query: str,
        top_k: int | None = None,
        top_n: int | None = None,
        *,
        rerank: bool = True,
        weight: float | None = None,
        generate: bool | None = None,
        filter: Filter | Mapping[str, Any] | Sequence[str] | None = None,
        explain: bool = False,
    ) -> PipelineResult:
        """Retrieve ``top_k`` candidates for ``query``, rerank them down to ``top_n``, and optionally answer.

        Args:
            top_k, top_n: override the config's ``retriever.top_k`` / ``reranker.top_n`` (None: use them).
            rerank: False skips a configured reranker for this call (the first stage's list is the answer).
            weight: the reranker's share of the final score for this call (default ``reranker.weight``).
            generate: answer from :attr:`PipelineResult.hits` with the configured generator (None: when one
                is configured). If generating fails, the result still holds both lists, ``answer`` is None
                and ``answer_error`` says why in one line.
            filter: search only chunks that match (:mod:`pipeline.filters`): ``{"source": "manuals/*.pdf",
                "lang": "zh"}``, ``["source=manuals/*.pdf"]`` or a :class:`~pipeline.filters.Filter`. The first
                stage applies it, so ``top_k`` candidates still come back when that many chunks match.
            explain: fill :attr:`PipelineResult.explanation`: per candidate, its first-stage place (and each
                hybrid retriever's), the reranker's raw and calibrated scores, the mixed score, its final place
                and why it left the final list (:func:`pipeline.scoring.explain_candidates`). The reranker
                scores the candidates a second time for their raw scores.

        The reranked list goes through context assembly (the config's ``context:``): at most
        ``max_chunks_per_doc`` chunks per document among the ``top_n``, neighbouring chunks merged.

        Raises:
            InputError: the query is empty or only whitespace, or ``top_k``/``top_n``/``weight`` is out of range.
            NoMatchError: (an InputError) the filter matches no chunk of the index.
            ConfigError: ``generate=True`` but no generator is configured.
        """
        query = validate_query(query)
        top_k = self.top_k if top_k is None else _positive("top_k", top_k)
        top_n = self.top_n if top_n is None else _positive("top_n", top_n)
        if top_n > top_k:
            raise InputError(f"top_n ({top_n}) is larger than top_k ({top_k})")
        if weight is not None and not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
            raise InputError(f"weight must be a number from 0 to 1, got {weight!r}")
        if generate is None:
            generate = self.config.generator is not None
        elif generate and self.config.generator is None:
            self._load_generator()  # raises the ConfigError that says how to configure one
        flt = Filter.from_value(filter)
        self.load(generator=False)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        retrieved = self._run("retriever", lambda: self._search(query, top_k, timings, flt))
        timings["retrieve"] = time.perf_counter() - start
        reranked, notes, scores, settings = None, (), None, None
        if self.reranker is not None and rerank:
            begin = time.perf_counter()
            context = self.config.context
            # every candidate is scored anyway; keeping them all lets the per-document cap fill top_n
            keep = len(retrieved) if context.max_chunks_per_doc is not None else top_n
            # the config's settings rank, whatever scorer (the stage, a server's queue, a cache) scores
            settings = RankSettings.from_params(self.config.reranker.params, max(keep, 1), weight)
            texts = reranker_texts(retrieved, self.config.reranker.params)
            scores = _beyond_depth(self._run("reranker", lambda: self.reranker.score(query, texts)), len(retrieved))
            reranked = rank_hits(retrieved, scores, settings)
            reranked = assemble_context(reranked, top_n, context.max_chunks_per_doc, context.merge_neighbours)
            timings["rerank"] = time.perf_counter() - begin
            note = self._run("reranker", lambda: self.reranker.skip_note(query, texts))
            notes = (note,) if note else ()
        timings["total"] = time.perf_counter() - start
        logger.debug("timings for %r: %s", query, timings)
        result = PipelineResult(query=query, retrieved=retrieved, reranked=reranked, top_n=top_n, timings=timings,
                                notes=notes)
        if explain:
            result = replace(result, explanation=self._explain(result, scores, settings, top_k, flt))
        if not generate:
            return result
        try:
            return self.answer(result)
        except RagError as exc:
            message = " ".join(str(exc).split())
            logger.warning("no answer for %r: %s", query, message)
            return replace(result, answer_error=message)

    def _explain(self, result: PipelineResult, scores, settings: RankSettings | None, top_k: int,
                 flt: Filter | None) -> Explanation:
        """The explanation of ``result`` (see :meth:`ask`); the raw scores are the scorer's for the same pairs."""
        raw = None
        if scores is not None:
            texts = reranker_texts(result.retrieved, self.config.reranker.params)
            options = ScoreOptions(raw=True)
            raw = self._run("reranker", lambda: self.reranker.score_many([(result.query, texts)], options)[0])
            raw = _beyond_depth(raw, len(result.retrieved))
        context = self.config.context
        return explain_candidates(
            result.retrieved, result.hits, scores=scores, raw=raw, settings=settings, top_k=top_k,
            top_n=result.top_n, max_chunks_per_doc=context.max_chunks_per_doc if scores is not None else None,
            merge_neighbours=context.merge_neighbours and scores is not None, filter=str(flt) if flt else None,
        )

    def answer(self, result: PipelineResult, max_tokens: int | None = None) -> PipelineResult:
        """``result`` with the generator's answer from its :attr:`~PipelineResult.hits` (``timings`` gains
        ``generate``). ``max_tokens`` lowers the answer's length limit; ``generator.max_tokens`` caps it.

        Raises:
            ConfigError: no generator is configured, or the prompt cannot fit the model's window.
            GeneratorError: the endpoint does not answer, rejects the key, or times out.
            ModelNotFoundError: the local model (or its package) is missing.
        """
        *_, answer = self.stream_answer(result, max_tokens)
        timings = {**result.timings, "generate": answer.timings.get("generate", 0.0) + answer.timings.get(
            "attribute", 0.0)}
        timings["total"] = result.timings.get("total", 0.0) + timings["generate"]
        return replace(result, answer=answer, answer_error=None, timings=timings)

    def stream_answer(self, result: PipelineResult, max_tokens: int | None = None) -> Iterator[str | Answer]:
        """The answer to ``result`` as it is generated: text pieces, then the :class:`~pipeline.types.Answer`."""
        generator = self._load_generator()
        pieces = generator.stream(result.query, result.hits, max_tokens)
        try:
            while (item := self._run("generator", lambda: next(pieces, None))) is not None:
                yield item
        finally:
            pieces.close()  # a reader that stops early stops the generation too

    def search(
        self, query: str, top_k: int | None = None, timings: dict[str, float] | None = None, *,
        filter: Filter | Mapping[str, Any] | Sequence[str] | None = None,
    ) -> list[Hit]:
        """The first stage's list for one query (no reranking), restricted by ``filter`` when given."""
        self.load(generator=False)
        top_k = self.top_k if top_k is None else _positive("top_k", top_k)
        timings = {} if timings is None else timings
        return self._run("retriever", lambda: self._search(validate_query(query), top_k, timings,
                                                           Filter.from_value(filter)))

    def _search(self, query: str, top_k: int, timings: dict[str, float], flt: Filter | None) -> list[Hit]:
        """The first stage's list for one query, restricted by ``flt`` when given."""
        if flt is None:
            return self.retriever.search([query], top_k, timings)[0]
        if "filter" not in inspect.signature(self.retriever.search).parameters:
            raise InputError(f"retriever {self.config.retriever.type!r} does not support filters; "
                             "use dense, bm25 or hybrid, or ask without a filter")
        return self.retriever.search([query], top_k, timings, filter=flt)[0]

    def _run(self, kind: str, call):
        stage = getattr(self.config, kind)
        try:
            return call()
        except RagError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            raise StageError(kind, stage.type, exc) from exc


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def validate_query(query: Any) -> str:
    """Return the query stripped; reject what cannot be a query."""
    if not isinstance(query, str):
        raise InputError(f"query must be a string, got {type(query).__name__}")
    cleaned = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in query).strip()
    if not cleaned:
        raise InputError("query is empty; ask a question, for example: \"symptoms of vitamin D deficiency\"")
    return cleaned


def check_manifest(manifest, config: PipelineConfig, embedder: Embedder | None, index_path: Path) -> None:
    """Fail when the index was built with another embedder or chunking than the config says.

    ``embedder`` None skips the vector-dimension check (a first stage that embeds no query).
    """
    built = manifest.embedder
    params = config.embedder.params
    expected = {
        "embedder.model": (built.get("model"), params.model),
        "embedder.normalize": (built.get("normalize"), params.normalize),
        "embedder.document_prompt": (built.get("document_prompt"), params.document_prompt),
    }
    for key, value in config.chunking.model_dump().items():
        expected[f"chunking.{key}"] = (manifest.chunking.get(key), value)
    for key, (was, now) in expected.items():
        if was != now:
            raise IndexMismatchError(
                f"index {index_path} was built with {key}={was!r} but the config says {now!r}; "
                "rebuild it with scripts/build_index.py using this config, or use the config it was built with"
            )
    if embedder is not None and built.get("dimension") != embedder.dimension:
        raise IndexMismatchError(
            f"index {index_path} holds {built.get('dimension')}-d vectors but {params.model!r} makes "
            f"{embedder.dimension}-d ones; rebuild the index with this embedder"
        )
    if not manifest.index.get("metric") == "inner_product":
        raise ConfigError(f"index {index_path} uses metric {manifest.index.get('metric')!r}; expected inner_product")


def _beyond_depth(scores: Sequence[float], candidates: int) -> list[float]:
    """``scores`` of the first candidates, NaN (not scored: the first stage's place) for the rest
    (``reranker.depth``)."""
    scores = [float(s) for s in scores]
    return scores + [float("nan")] * (candidates - len(scores))
