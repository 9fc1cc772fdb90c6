"""Length-sorted batching with out-of-memory back-off, written once for every model call.

Sorting inputs by length before batching means each batch pads to the length
of its own longest item, not the longest of all; the longest batch runs first,
so an out-of-memory error shows up at once rather than at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def run_length_sorted(
    lengths: Sequence[int],
    batch_size: int,
    call: Callable[[np.ndarray], np.ndarray],
    is_oom: Callable[[BaseException], bool] = lambda exc: False,
    on_oom: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, int]:
    """Call ``call(indices)`` on batches of indices, longest items first; results in input order.

    Args:
        lengths: the size of each item (tokens).
        batch_size: items per call, halved after each out-of-memory error.
        call: maps an index array to a float array of the same length.
        is_oom: tells an out-of-memory error from any other (only those are retried).
        on_oom: run after an out-of-memory error, before retrying (free caches).

    Returns:
        (results in input order, the batch size that finally worked).
    """
    n = len(lengths)
    out = np.empty(n, dtype=np.float32)
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    start = 0
    while start < n:
        indices = order[start : start + batch_size]
        try:
            out[indices] = call(indices)
        except Exception as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            on_oom()
            batch_size = max(1, batch_size // 2)
            logger.warning("out of memory on a batch of %d; retrying with batch size %d", len(indices), batch_size)
            continue
        start += len(indices)
    return out, batch_size
