"""The application object the routes call: the served pipelines, metrics, settings and request checks.

A route is a few lines: it validates its body (FastAPI, :mod:`server.schemas`), takes the
:class:`Service` from the request (:func:`service`), calls it or the pipeline it hands out, and
shapes the answer. Loading, readiness, the API key and the checks every route shares live here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
from fastapi import Depends, Request

from pipeline.config import PipelineConfig, ServerParams
from pipeline.errors import IndexMismatchError
from pipeline.filters import Filter
from pipeline.pipeline import Pipeline, validate_query
from pipeline.types import ScoreOptions
from server.access import Access, Grant
from server.cache import ResponseCache
from server.errors import ApiError
from server.knowledge import Knowledge
from server.metrics import Metrics
from server.pipelines import PipelineSet, Served, read_current

logger = logging.getLogger(__name__)


class Reranked(NamedTuple):
    """What :meth:`Service.rerank` returns: the served config's name, each text's score (NaN: not scored),
    the texts' order (best first) and the seconds scoring took."""

    config: str
    scores: np.ndarray
    order: np.ndarray
    seconds: float


class Service:
    """Everything a request needs, built once per app by :func:`server.app.create_app`.

    Args:
        configs: name -> validated config, in order; the first is the default.
        index_paths: name -> index folder overriding that config's ``index.path``.
        settings: the ``server`` section.
        load: whether :meth:`start_loading` loads models and index (in a background thread).
    """

    def __init__(
        self,
        configs: Mapping[str, PipelineConfig],
        index_paths: Mapping[str, str | Path] | None,
        settings: ServerParams,
        *,
        load: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.cache = ResponseCache(settings.cache_size, settings.cache_mb * 1_000_000,
                                   lambda hit: self.metrics.cache_lookups.labels("hit" if hit else "miss").inc())
        self.pipelines = PipelineSet(
            configs, index_paths, settings, on_batch=self.metrics.observe_batch, on_swap=self._swapped,
        )
        self.access = Access(settings)
        self.api_key = self.access.master
        self.knowledge = Knowledge(configs, {name: s.index_path for name, s in self.pipelines.served.items()},
                                   settings, embedder_for=self.pipelines.embedder, on_job=self.metrics.observe_job)
        self.started = int(time.time())
        self._load_on_start = load
        self._loader: threading.Thread | None = None

    def _swapped(self, name: str, old: str | None, new: str) -> None:
        self.metrics.index_swaps.inc()
        self.cache.clear()  # answers of the old version can no longer be asked for: free them

    # -- loading ----------------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load models and index in a background thread, unless loaded, loading, or ``load=False``."""
        thread = self._loader
        if self._load_on_start and not self.pipelines.ready and (thread is None or not thread.is_alive()):
            self._loader = threading.Thread(target=self._load, name="pipeline-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        pipelines = self.pipelines
        try:
            pipelines.load()
            self.metrics.ready.set(1)
            self.knowledge.resume()  # jobs a stopped server left unfinished
            logger.info("ready: %s", ", ".join(f"{s.name} ({s.pipeline.version})" for s in pipelines.served.values()))
        except Exception as exc:  # reported by /readyz; retried on its next call
            pipelines.error = f"loading failed: {exc}"
            logger.error("%s", pipelines.error)

    def close(self) -> None:
        self.knowledge.queue.close()
        self.pipelines.close()

    # -- checks every route shares ----------------------------------------------------------------

    def authorize(self, request: Request) -> Grant:
        """Raise 401 unless the request carries one of the API keys (when any is set); its grant is kept on
        ``request.state.grant`` for the checks of a collection (:meth:`require`)."""
        grant = request.state.grant = self.access.grant(request)
        return grant

    def require(self, request: Request, collection: str | None, role: str = "read") -> None:
        """403 unless the request's key may ``role`` (read or write) ``collection``."""
        grant = getattr(request.state, "grant", None) or self.authorize(request)
        self.access.require(grant, collection, role)

    def check_query(self, query: str) -> str:
        if len(query) > self.settings.max_query_chars:
            raise ApiError(422, "invalid_request", f"query is {len(query)} characters; the limit is "
                           f"{self.settings.max_query_chars} (server.max_query_chars)")
        return validate_query(query)

    def check_top_k(self, top_k: int | None) -> int | None:
        if top_k is not None and top_k > self.settings.max_top_k:
            raise ApiError(422, "invalid_request", f"top_k is {top_k}; the limit is {self.settings.max_top_k} "
                           "(server.max_top_k)")
        return top_k

    @staticmethod
    def check_filter(value: Any) -> Filter | None:
        """The request's filter, parsed once (a malformed one is a 422 that names the problem)."""
        return Filter.from_value(value)

    def pipeline(self, name: str | None, collection: str | None = None,
                 request: Request | None = None) -> tuple[Served, Pipeline]:
        """The served config called ``name`` (None: the default) and the pipeline answering for it now.

        ``collection`` answers from that collection's index (with ``name``, or the collection's own config);
        None keeps the config's own index, as before. With ``request``, its key must be allowed to read the collection.
        """
        if collection is None:
            served, pipe = self.pipelines.get(name)
            if request is not None:
                self.require(request, self.knowledge.config_collection.get(served.name), "read")
            return served, pipe
        col = self.knowledge.get(collection)
        if request is not None:
            self.require(request, col.name, "read")
        config = name or col.config
        if not col.managed and self.pipelines.resolve(config).index_path == col.index_path:
            return self.pipelines.get(config)
        served = self.pipelines.attach(col.name, config, col.index_path)
        if read_current(col.index_path) is None:
            raise ApiError(409, "empty_collection", f"collection {col.name!r} has no indexed document yet: upload "
                           f"some (POST /v1/collections/{col.name}/documents) and wait for the job")
        try:
            return self.pipelines.get(served=served)
        except IndexMismatchError as exc:
            raise ApiError(422, "invalid_request",
                           f"config {config!r} cannot read collection {col.name!r}: {exc}") from None

    # -- reranking documents (no first stage) ------------------------------------------------------

    def rerank(self, model: str | None, query: str, texts: list[str], options: ScoreOptions) -> Reranked:
        """Score ``texts`` against ``query`` with a served config's reranker (no first stage).

        ``model`` names a served config, else the first with a reranker. A list longer than one batch
        (``max_batch_pairs``) is scored in batches by the queue; only one over ``max_documents`` is refused.
        """
        settings = self.settings
        if len(texts) > settings.max_documents:
            raise ApiError(413, "too_large", f"{len(texts)} documents; the limit is {settings.max_documents} "
                           "(server.max_documents; longer lists are served in batches up to it)")
        if not texts:
            raise ApiError(422, "invalid_request", "documents is empty; send at least one")
        query = self.check_query(query)
        name = model if model in self.pipelines.served else None
        if name is None:
            with_reranker = [s.name for s in self.pipelines.served.values() if s.config.reranker is not None]
            if not with_reranker:
                raise ApiError(400, "unsupported", "no served config has a reranker")
            name = with_reranker[0]
        served, pipe = self.pipeline(name)
        if pipe.reranker is None:
            raise ApiError(400, "unsupported", f"config {served.name!r} has no reranker")
        start = time.perf_counter()
        scores = np.asarray(pipe.reranker.score_many([(query, texts)], options)[0], dtype=np.float32)
        seconds = time.perf_counter() - start
        self.metrics.stage.labels("rerank").observe(seconds)
        # A pair the model cannot read (outside its languages) has no score (NaN): ranked last.
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
        return Reranked(served.name, scores, order, seconds)


def server_timing(timings: Mapping[str, float]) -> str:
    """A ``Server-Timing`` header value: each stage's duration in milliseconds (browsers' dev tools show it).

    Example:
        >>> server_timing({"embed": 0.0081, "total": 0.0123})
        'embed;dur=8.1, total;dur=12.3'
    """
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in timings.items())


def service(request: Request) -> Service:
    """The app's :class:`Service` (a FastAPI dependency)."""
    return request.app.state.service


def authorize(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the API key (when one is set)."""
    service(request).authorize(request)


App = Annotated[Service, Depends(service)]  # a route's ``app: App`` parameter: the Service
