"""Micro-batching of cross-encoder calls: pairs of concurrent requests scored in one batch.

:class:`MicroBatcher` is a :class:`~pipeline.protocols.Scorer` in front of the
loaded reranker: hand it to ``Pipeline(stages={"reranker": batcher})`` and the
pipeline ranks with its config's settings. Request threads call ``score`` (or
``score_many``); one worker thread takes the first waiting request, waits up to
``wait_ms`` for others with the same :class:`~pipeline.types.ScoreOptions` (up to
``max_pairs`` pairs in all), scores them together with the scorer's
``score_many`` and hands each request its scores. A request of more than
``max_pairs`` passages is split into parts of ``max_pairs``, queued one after
the other, so a long candidate list is served in batches and others' requests
are not stuck behind it. At most ``max_queue`` parts wait; beyond that
:class:`QueueFullError` (the server answers 503 with Retry-After), so memory
stays bounded under any load. The worker is the only thread that runs the
model, which also keeps the tokenizer single-threaded.
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
from pipeline.protocols import Scorer
from pipeline.types import DEFAULT_SCORE_OPTIONS, ScoreOptions

logger = logging.getLogger(__name__)


class QueueFullError(RagError):
    """Too many requests wait for the cross-encoder; retry shortly."""


class _Request:
    __slots__ = ("future", "options", "passages", "query", "queued_at")

    def __init__(self, query: str, passages: Sequence[str], options: ScoreOptions) -> None:
        self.query = query
        self.passages = passages
        self.options = options
        self.future: Future = Future()
        self.queued_at = time.perf_counter()


class MicroBatcher(Scorer):
    """A :class:`~pipeline.protocols.Scorer` that scores requests of many threads in shared batches.

    Args:
        reranker: the loaded scorer (a reranker stage) whose ``score_many`` runs the batches.
        wait_ms: how long the first request of a batch waits for company.
        max_pairs: pairs per batch (a larger request is split into parts of this size).
        max_queue: requests (parts) allowed to wait; more raise :class:`QueueFullError`.
        enabled: False scores each request alone, one at a time (no waiting), for comparison.
        on_batch: called with (requests, pairs, seconds) after each batch (metrics).
    """

    def __init__(
        self,
        reranker: Scorer,
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

    def load(self) -> MicroBatcher:
        """Load the scorer's model now."""
        self.reranker.load()
        return self

    def describe(self) -> dict[str, Any]:
        return self.reranker.describe()

    def skip_note(self, query: str, passages: Sequence[str]) -> str | None:
        return self.reranker.skip_note(query, passages)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to ``query`` (float32 0..1, input order), batched with other callers.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
        """
        return self.score_many([(query, passages)])[0]

    def score_many(
        self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> list[np.ndarray]:
        """The scorer's ``score_many``, each request's parts of at most ``max_pairs`` queued with other callers'.

        Raises:
            QueueFullError: the queue cannot take the parts of these requests now.
        """
        if not self.enabled:
            return self._score_alone(requests, options)
        parts = [[_Request(query, list(passages[i: i + self.max_pairs]), options)
                  for i in range(0, max(len(passages), 1), self.max_pairs)] for query, passages in requests]
        queued = [part for request in parts for part in request]
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if self._pending and len(self._pending) + len(queued) > self.max_queue:  # (alone, a long one fits)
                raise QueueFullError(f"{len(self._pending)} requests are waiting for the reranker; retry shortly")
            self._pending.extend(queued)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="rerank-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return [np.concatenate([part.future.result() for part in request]).astype(np.float32, copy=False)
                for request in parts]

    def _score_alone(self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions) -> list[np.ndarray]:
        with self._cond:
            if self._waiting >= self.max_queue:
                raise QueueFullError(f"{self._waiting} requests are waiting for the reranker; retry shortly")
            self._waiting += 1
        try:
            with self._solo:
                out = []
                for query, passages in requests:
                    start = time.perf_counter()
                    out.append(self.reranker.score_many([(query, passages)], options)[0])
                    if self.on_batch:
                        self.on_batch(1, len(passages), time.perf_counter() - start)
                return out
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
            except BaseException as exc:  # the worker lives on; the failing request gets the error
                if len(batch) == 1:
                    batch[0].future.set_exception(exc)
                else:  # one request's passage (too long, say) must not fail the others batched with it
                    for request in batch:
                        self._score_one(request)
                continue
            for request, scores in zip(batch, results):
                request.future.set_result(scores)
            if self.on_batch:
                self.on_batch(len(batch), sum(len(r.passages) for r in batch), time.perf_counter() - start)

    def _score_one(self, request: _Request) -> None:
        try:
            request.future.set_result(self._score_batch([request])[0])
        except BaseException as exc:
            request.future.set_exception(exc)

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
            first = self._pending.popleft()
            batch, pairs, later = [first], len(first.passages), []
            while self._pending and pairs < self.max_pairs:  # the same options, in arrival order
                request = self._pending.popleft()
                if request.options == first.options and pairs + len(request.passages) <= self.max_pairs:
                    pairs += len(request.passages)
                    batch.append(request)
                else:
                    later.append(request)
            self._pending.extendleft(reversed(later))
            return batch

    def _score_batch(self, batch: list[_Request]) -> list[np.ndarray]:
        return self.reranker.score_many([(r.query, r.passages) for r in batch], batch[0].options)
