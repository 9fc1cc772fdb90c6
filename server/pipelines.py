"""The server's named pipelines: loaded once, sharing equal stages, swapped when the index's CURRENT moves.

Every config the server was started with is a named pipeline. Stages with equal
settings are built once and shared (the embedder by its section; the
cross-encoder model by its section less ``top_n``/``weight``/``mix``, the ranking
settings, which stay per config; an index version by path, settings and version).
Each cross-encoder model gets one :class:`~server.batching.MicroBatcher`, a
:class:`~pipeline.protocols.Scorer` handed to every pipeline that uses the model,
so concurrent requests of every config share its batches, and each pipeline ranks
with its own config's settings.

Hot swap: :meth:`PipelineSet.get` reads the index's ``CURRENT`` pointer (a tiny
file) on every request; when it names another version than the pipeline in use,
one request builds a new :class:`~pipeline.Pipeline` over it, sharing the loaded
models through ``stages=``, and swaps it in under a lock, while other requests
keep answering from the old one. A request holds the pipeline object it started
with, so it reads exactly one version.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, ServerParams
from pipeline.errors import ConfigError, RagError
from pipeline.pipeline import Pipeline, build_stage
from pipeline.store import current_version
from server.batching import MicroBatcher

logger = logging.getLogger(__name__)

RANKING_KEYS = ("top_n", "weight", "mix")  # a config's own; the model (and its batcher) is shared


class NotReadyError(RagError):
    """Models and index are still loading (or failed to load)."""


@dataclass
class Served:
    """One named config and the pipeline answering for it now."""

    name: str
    config: PipelineConfig
    index_path: Path
    pipeline: Pipeline | None = None
    failed_version: str | None = None  # a version that failed to load; not retried until CURRENT moves again
    collection: str | None = None  # a collection's pipeline (loaded on its first request), not a served config


class PipelineSet:
    """Named pipelines over shared stages; see the module docstring.

    Args:
        configs: name -> validated config, in order; the first is the default.
        index_paths: name -> index folder overriding the config's ``index.path``.
        settings: the ``server`` section (micro-batching, queue bound).
        on_batch: metrics hook handed to each micro-batcher.
        on_swap: called with (config name, old version, new version) after a hot swap.
    """

    def __init__(
        self,
        configs: Mapping[str, PipelineConfig],
        index_paths: Mapping[str, str | Path] | None = None,
        settings: ServerParams | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
        on_swap: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        if not configs:
            raise ConfigError("the server needs at least one config")
        index_paths = index_paths or {}
        self.settings = settings or ServerParams()
        self.served = {
            name: Served(name, config, Path(index_paths.get(name) or config.index.params.path))
            for name, config in configs.items()
        }
        self.default = next(iter(self.served))
        self._on_batch = on_batch
        self._on_swap = on_swap
        self._stages: dict[tuple[str, str], Any] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._indexes: dict[str, tuple[str, Any]] = {}  # index key -> (version, IndexBundle)
        self.attached: dict[tuple[str, str], Served] = {}  # (collection, config) -> its pipeline
        self._lock = threading.Lock()
        self.error: str | None = None

    # -- lookup ---------------------------------------------------------------------------------

    def resolve(self, name: str | None) -> Served:
        """The served config called ``name`` (None: the default)."""
        served = self.served.get(name or self.default)
        if served is None:
            raise ConfigError(f"unknown config {name!r}; this server has: {', '.join(self.served)}")
        return served

    @property
    def ready(self) -> bool:
        return all(s.pipeline is not None for s in self.served.values())

    def attach(self, collection: str, config: str, index_path: Path) -> Served:
        """The pipeline of config ``config`` over a collection's index (made on first use, loaded by :meth:`get`)."""
        key = (collection, config)
        served = self.attached.get(key)
        if served is None or served.index_path != index_path:
            served = self.attached[key] = Served(config, self.resolve(config).config, index_path, collection=collection)
        return served

    def detach(self, collection: str) -> None:
        """Forget the pipelines of a deleted collection, and the index they had loaded."""
        paths = {str(self.attached.pop(key).index_path.resolve()) for key in [k for k in self.attached
                                                                               if k[0] == collection]}
        for key in [k for k in self._indexes if json.loads(k)["path"] in paths]:
            del self._indexes[key]

    def embedder(self, config: PipelineConfig) -> Any:
        """The loaded embedder of ``config`` (shared with the pipelines; ingestion jobs encode with it)."""
        embedder = config.embedder
        return self._shared("embedder", embedder.to_dict(), lambda: build_stage(embedder))

    def get(self, name: str | None = None, *, served: Served | None = None) -> tuple[Served, Pipeline]:
        """The pipeline to answer one request with: the live index version's (swapped in if it moved).

        ``served``: an attached collection's pipeline (:meth:`attach`) instead of the config ``name``.

        Raises:
            NotReadyError: the pipeline is not loaded yet.
        """
        served = served or self.resolve(name)
        pipe = served.pipeline
        if pipe is None and served.collection is not None and self.ready:
            with self._lock:  # a collection's first request loads its index (the models are shared)
                if served.pipeline is None:
                    served.pipeline = self._build(served)
            pipe = served.pipeline
        if pipe is None:
            raise NotReadyError(self.error or "models and index are still loading")
        live = read_current(served.index_path)
        if live is None or live == pipe.version or live == served.failed_version:
            return served, pipe
        # Wait (bounded) while another request swaps the new version in: a client that saw its job
        # done must not be answered from the version before it. Past the bound, the version in use.
        if not self._lock.acquire(timeout=SWAP_WAIT_S):
            return served, pipe
        try:
            live = read_current(served.index_path)  # it may have moved on while this request waited
            if live is not None and live != served.pipeline.version and live != served.failed_version:
                self._swap(served, live)
        finally:
            self._lock.release()
        return served, served.pipeline

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> None:
        """Build and load every pipeline (models and index once). Raises the first loading error."""
        with self._lock:
            for served in self.served.values():
                if served.pipeline is None:
                    served.pipeline = self._build(served)
        self.error = None

    def _swap(self, served: Served, live: str) -> None:
        old = served.pipeline.version if served.pipeline is not None else None
        try:
            pipe = self._build(served)
        except RagError as exc:
            served.failed_version = live
            logger.error("config %s: index version %s failed to load, still serving %s: %s",
                         served.name, live, old, exc)
            return
        served.pipeline = pipe
        served.failed_version = None
        logger.info("config %s: swapped index version %s -> %s", served.name, old, pipe.version)
        if self._on_swap:
            self._on_swap(served.name, old, pipe.version)

    def _build(self, served: Served) -> Pipeline:
        config = served.config
        stages: dict[str, Any] = {}
        if "embedder" in config.retriever.cls.requires:
            embedder = config.embedder
            stages["embedder"] = self._shared("embedder", embedder.to_dict(), lambda: build_stage(embedder))
        if config.reranker is not None:
            stages["reranker"] = self._reranker(config)
        index_key = _key({
            "path": str(served.index_path.resolve()), "index": config.index.to_dict(),
            "embedder": config.embedder.to_dict(), "chunking": config.chunking.model_dump(),
        })
        cached = self._indexes.get(index_key)
        if cached is not None and cached[0] == read_current(served.index_path):
            stages["index"] = cached[1]
        pipe = Pipeline(config, served.index_path, stages=stages).load()
        self._indexes[index_key] = (pipe.version, pipe.index)
        return pipe

    def _reranker(self, config: PipelineConfig) -> MicroBatcher:
        """The batching scorer in front of the config's reranker model, shared by configs of equal model settings."""
        model_settings = {k: v for k, v in config.reranker.to_dict().items() if k not in RANKING_KEYS}
        key = _key(model_settings)
        inner = self._shared("reranker", model_settings, lambda: build_stage(config.reranker).load())
        batcher = self._batchers.get(key)
        if batcher is None:
            s = self.settings
            batcher = self._batchers[key] = MicroBatcher(
                inner, wait_ms=s.batch_wait_ms, max_pairs=s.max_batch_pairs, max_queue=s.max_queue,
                enabled=s.micro_batching, on_batch=self._on_batch,
            )
        return batcher

    def _shared(self, kind: str, settings: dict[str, Any], build: Callable[[], Any]) -> Any:
        key = (kind, _key(settings))
        if key not in self._stages:
            self._stages[key] = build()
        return self._stages[key]

    @property
    def batchers(self) -> list[MicroBatcher]:
        return list(self._batchers.values())

    def stage_count(self, kind: str) -> int:
        """How many distinct stages of ``kind`` are loaded (sharing is visible in tests)."""
        return sum(1 for k, _ in self._stages if k == kind)

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()


SWAP_WAIT_S = 30.0  # the longest a request waits for a swap in progress (loading one index version)


def read_current(index_path: Path) -> str | None:
    """The version name ``CURRENT`` points at, or None when it cannot be read (missing, damaged, not a
    regular file: the store's bounded read never blocks on a FIFO)."""
    try:
        return current_version(index_path).name
    except RagError:
        return None


def _key(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)
