"""Micro-batching of cross-encoder calls: pairs of concurrent requests scored in one batch.

Request threads call :meth:`MicroBatcher.score`; one worker thread takes the
first waiting request, waits up to ``wait_ms`` for others (up to ``max_pairs``
pairs in all), scores them together with the reranker's ``score_many`` and
hands each request its scores. At most ``max_queue`` requests wait; beyond
that :class:`QueueFullError` (the server answers 503 with Retry-After), so
memory stays bounded under any load. The worker is the only thread that runs
the model, which also keeps the tokenizer single-threaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from pipeline.errors import RagError
from pipeline.types import Hit

logger = logging.getLogger(__name__)


class QueueFullError(RagError):
    """Too many requests wait for the cross-encoder; retry shortly."""


class _Request:
    __slots__ = ("future", "passages", "query", "queued_at")

    def __init__(self, query: str, passages: Sequence[str]) -> None:
        self.query = query
        self.passages = passages
        self.future: Future = Future()
        self.queued_at = time.perf_counter()


class MicroBatcher:
    """Scores ``(query, passages)`` requests of many threads in shared batches.

    Args:
        reranker: a loaded reranker; ``score_many`` is used when it has one, else ``score`` per request.
        wait_ms: how long the first request of a batch waits for company.
        max_pairs: pairs per batch (a larger single request is scored alone).
        max_queue: requests allowed to wait; one more raises :class:`QueueFullError`.
        enabled: False scores each request alone, one at a time (no waiting), for comparison.
        on_batch: called with (requests, pairs, seconds) after each batch (metrics).
    """

    def __init__(
        self,
        reranker: Any,
        *,
        wait_ms: float = 2.0,
        max_pairs: int = 256,
        max_queue: int = 256,
        enabled: bool = True,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.reranker = reranker
        self.wait = wait_ms / 1000.0
        self.max_pairs = max_pairs
        self.max_queue = max_queue
        self.enabled = enabled
        self.on_batch = on_batch
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._solo = threading.Lock()  # batching off: one request at a time on the model
        self._waiting = 0  # batching off: requests holding or waiting for the lock
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Requests waiting to be scored."""
        return len(self._pending) if self.enabled else self._waiting

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to ``query`` (float32 0..1, input order), batched with other callers.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
        """
        if not self.enabled:
            return self._score_alone(query, passages)
        request = _Request(query, list(passages))
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are waiting for the reranker; retry shortly")
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="rerank-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request.future.result()

    def _score_alone(self, query: str, passages: Sequence[str]) -> np.ndarray:
        with self._cond:
            if self._waiting >= self.max_queue:
                raise QueueFullError(f"{self._waiting} requests are waiting for the reranker; retry shortly")
            self._waiting += 1
        try:
            with self._solo:
                start = time.perf_counter()
                scores = self.reranker.score(query, passages)
                if self.on_batch:
                    self.on_batch(1, len(passages), time.perf_counter() - start)
                return scores
        finally:
            with self._cond:
                self._waiting -= 1

    def close(self) -> None:
        """Stop the worker after the requests already queued are scored."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            start = time.perf_counter()
            try:
                results = self._score_batch(batch)
            except BaseException as exc:  # every waiter gets the error; the worker lives on
                for request in batch:
                    request.future.set_exception(exc)
                continue
            for request, scores in zip(batch, results):
                request.future.set_result(scores)
            if self.on_batch:
                self.on_batch(len(batch), sum(len(r.passages) for r in batch), time.perf_counter() - start)

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._pending[0].queued_at + self.wait
            while not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0 or sum(len(r.passages) for r in self._pending) >= self.max_pairs:
                    break
                self._cond.wait(left)
            batch = [self._pending.popleft()]
            pairs = len(batch[0].passages)
            while self._pending and pairs + len(self._pending[0].passages) <= self.max_pairs:
                request = self._pending.popleft()
                pairs += len(request.passages)
                batch.append(request)
            return batch

    def _score_batch(self, batch: list[_Request]) -> list[np.ndarray]:
        score_many = getattr(self.reranker, "score_many", None)
        if score_many is not None:
            return score_many([(r.query, r.passages) for r in batch])
        return [self.reranker.score(r.query, r.passages) for r in batch]


class BatchedReranker:
    """A reranker stage whose scoring goes through a :class:`MicroBatcher`; hand it to ``Pipeline(stages=)``.

    Ranking (score mixing, ``top_n``) is the wrapped stage's own ``rank``; only ``score`` is shared.
    """

    def __init__(self, inner: Any, batcher: MicroBatcher) -> None:
        self.inner = inner
        self.batcher = batcher
        self.params = inner.params

    def load(self) -> BatchedReranker:
        self.inner.load()
        return self

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return self.batcher.score(query, passages)

    def rerank(
        self, query: str, hits: Sequence[Hit], top_n: int | None = None, weight: float | None = None
    ) -> list[Hit]:
        return self.inner.rank(hits, self.score(query, [hit.text for hit in hits]), top_n, weight)
