"""A bounded cache of answers: the same request to the same config and index version answers from memory.

Keys are (config name, index version, the request body as canonical JSON), so a hot swap (a new index
version) never answers from the old one; the server also clears the cache on a swap, so old answers do
not hold memory. Least recently used entries leave first; ``size`` 0 turns the cache off. Answers that
are generated (sampling may differ) are not cached by the routes.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class ResponseCache:
    """Up to ``size`` answers, least recently used out first; ``on_lookup(hit)`` is told of every lookup."""

    def __init__(self, size: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.size = size
        self.on_lookup = on_lookup
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(config: str, version: str, route: str, body: dict[str, Any]) -> str:
        return json.dumps([config, version, route, body], sort_keys=True, ensure_ascii=False)

    def get(self, key: str) -> Any | None:
        """The cached answer for ``key``, or None (always None when the cache is off)."""
        if self.size == 0:
            return None
        with self._lock:
            answer = self._entries.get(key)
            if answer is not None:
                self._entries.move_to_end(key)
        if self.on_lookup is not None:
            self.on_lookup(answer is not None)
        return answer

    def put(self, key: str, answer: Any) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._entries[key] = answer
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
