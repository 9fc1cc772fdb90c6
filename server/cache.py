"""A bounded cache of answers: the same request to the same config and index version answers from memory.

Keys are (config name, index version, the request body as canonical JSON), so a hot swap (a new index
version) never answers from the old one; the server also clears the cache on a swap, so old answers do
not hold memory. At most ``size`` answers and ``max_bytes`` of their JSON are kept (an answer with a
thousand hits weighs a megabyte or more); least recently used entries leave first, and an answer
heavier than a quarter of ``max_bytes`` is not kept. ``size`` 0 turns the cache off. Answers that are
generated (sampling may differ) are not cached by the routes.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class ResponseCache:
    """Up to ``size`` answers and ``max_bytes`` of JSON, least recently used out first.

    ``on_lookup(hit)`` is told of every lookup (metrics).
    """

    def __init__(self, size: int, max_bytes: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.on_lookup = on_lookup
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(config: str, version: str, route: str, body: dict[str, Any]) -> str:
        return json.dumps([config, version, route, body], sort_keys=True, ensure_ascii=False)

    def get(self, key: str) -> Any | None:
        """The cached answer for ``key``, or None (always None when the cache is off)."""
        if self.size == 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        answer = entry[0] if entry is not None else None
        if self.on_lookup is not None:
            self.on_lookup(answer is not None)
        return answer

    def put(self, key: str, answer: Any) -> None:
        if self.size == 0:
            return
        weight = len(key) + len(json.dumps(answer, ensure_ascii=False))
        if weight > self.max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += weight - (old[1] if old is not None else 0)
            self._entries[key] = (answer, weight)
            while len(self._entries) > self.size or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    @property
    def bytes(self) -> int:
        """The JSON size of the answers held."""
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
