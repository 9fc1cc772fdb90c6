"""Watched folders of a running server: a config's ``watch:`` section keeps its collection in sync.

For each served config with a ``watch:`` section (:class:`pipeline.config.WatchParams`), a
:class:`indexer.watch.FolderWatch` thread watches the folder and turns each batch of changes into one
ingestion job of the collection serving that config's index (:meth:`server.knowledge.Knowledge.submit_changes`):
a first job when the server starts (the folder as it is now), then one per burst of changes, each
waiting for the one before. The jobs are the uploads' jobs: visible at ``/v1/jobs/{id}`` and in the
collection's job list, published atomically, a failed file keeping its documents, the build lock shared
with ``rag-build``. The threads stop with the server.
"""

from __future__ import annotations

import logging
from typing import Any

from indexer.watch import Batch, FolderWatch, RetryLater
from server.errors import ApiError

logger = logging.getLogger(__name__)


def start_watches(knowledge: Any) -> list[FolderWatch]:
    """Start one watch per collection whose config has ``watch:`` (the first such config of a shared index);
    returns them, to :func:`stop_watches` at shutdown. A folder that cannot be watched is logged, not fatal."""
    watches: list[FolderWatch] = []
    seen: set[str] = set()
    for name, config in knowledge.configs.items():
        settings = config.watch
        collection = knowledge.config_collection.get(name)
        if settings is None or collection is None or collection in seen:
            continue
        seen.add(collection)
        folder = settings.folder

        def submit(batch: Batch | None, collection: str = collection, folder: str = folder):
            try:
                return knowledge.submit_changes(collection, folder, batch.changed if batch else (),
                                                batch.removed if batch else ())
            except ApiError as exc:
                if exc.status in (409, 429):  # busy, or server.max_jobs jobs in flight: hand it over later
                    raise RetryLater(exc.message) from None
                raise

        try:
            watch = FolderWatch(
                folder, submit, debounce=settings.debounce, polling=settings.polling,
                poll_interval=settings.poll_interval, exclude=[knowledge.get(collection).index_path],
            ).start()
        except Exception as exc:  # a missing folder, no watchdog: the server still serves
            logger.error("collection %s: cannot watch %s (%s)", collection, folder, exc)
            continue
        logger.info("collection %s keeps %s in sync", collection, folder)
        watches.append(watch)
    return watches


def stop_watches(watches: list[FolderWatch]) -> None:
    """Stop every watch (each after the hand-over in progress)."""
    for watch in watches:
        watch.stop(timeout=10)
