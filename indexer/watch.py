"""Keep an index in sync with a folder: file events become debounced batches, each batch one incremental build.

Three pieces, usable alone or together:

* :class:`CorpusWatcher` watches a corpus folder with `watchdog`_ (inotify on Linux, FSEvents or kqueue on
  macOS, ReadDirectoryChangesW on Windows) and hands out :class:`Batch` es of changed and removed files once
  the folder has been quiet for ``debounce`` seconds (or ``max_delay`` after the first change, so a folder
  that never rests is still indexed). Where the OS delivers no events (network and FUSE file systems,
  containers without inotify, exhausted inotify limits) it polls instead: ``polling=True``, or
  ``RAG_WATCH_POLL=1`` in the environment, or automatically when the native observer cannot start. Editors'
  temporary files and hidden files are ignored (:func:`is_ignored`), and so are files no reader reads.
* :func:`sync` applies a batch: an incremental build of the folder (:func:`indexer.build.build_index` with
  ``reuse``, so only new or changed chunks are encoded) that publishes a new version atomically; a file that
  fails to read keeps its previous documents (``keep_failed``), a removed file leaves the index.
* :class:`IndexSync` runs both: a first sync of the whole folder, then one sync per batch, either in the
  caller's thread (:meth:`IndexSync.run`, what ``rag-build CORPUS --watch`` does) or in a background thread
  (:meth:`IndexSync.start` / :meth:`IndexSync.stop`, what a served collection with ``watch:`` does). The
  build lock keeps it apart from other writers: a batch that finds the index locked waits and is retried.

Every sync reads the whole folder again (reading text is fast; PDFs cost their parsing) but encodes only
what changed, so the result is the index a full build of the folder gives at that moment.

.. _watchdog: https://github.com/gorakhargosh/watchdog
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from indexer.build import BuildReport, build_index
from indexer.corpus import MAX_FILE_MB
from indexer.readers import reader_for
from pipeline.config import PipelineConfig
from pipeline.errors import CorpusError, IndexLockedError, InputError, MissingDependencyError, RagError

logger = logging.getLogger(__name__)

POLL_ENV = "RAG_WATCH_POLL"  # "1" (or true/yes): poll the folder instead of waiting for OS events
DEBOUNCE_S = 1.0  # a batch goes once the folder has been quiet this long ...
MAX_DELAY_S = 10.0  # ... or this long after its first change, whichever comes first
POLL_INTERVAL_S = 1.0  # how often the polling observer compares the folder with its last snapshot
LOCKED_RETRY_S = 2.0  # a batch that found the index locked by another writer is retried after this

# Names editors, browsers and office suites give files they are still writing, or backups next to the real one.
TEMP_SUFFIXES = (
    "~", ".swp", ".swo", ".swx", ".swpx", ".kate-swp", ".tmp", ".temp", ".part", ".partial", ".crdownload",
    ".download", ".!ut", ".lock",
)
TEMP_NAMES = frozenset({"4913"})  # vim writes and deletes this file to test that a folder is writable


def is_ignored(name: str) -> bool:
    """True for a file or folder name the watcher ignores: hidden (``.name``, which covers vim's ``.x.swp``,
    Emacs' ``.#lock`` and LibreOffice's ``.~lock.x#``), a backup or partial download (``x~``, ``x.part``,
    ``x.crdownload``, ``x.tmp``), Emacs' ``#autosave#``, MS Office's ``~$owner`` file, vim's ``4913`` probe.

    >>> [is_ignored(n) for n in ("notes.md", ".notes.md.swp", "notes.md~", "#notes.md#", "report.pdf.part")]
    [False, True, True, True, True]
    """
    lower = name.lower()
    return (
        name.startswith((".", "~$"))
        or (name.startswith("#") and name.endswith("#"))
        or lower.endswith(TEMP_SUFFIXES)
        or name in TEMP_NAMES
    )


@dataclass(frozen=True)
class Batch:
    """What changed in a corpus folder since the last batch: paths relative to it, ``/``-separated.

    ``changed`` holds files added, modified or renamed to (and folders created or moved in); ``removed``
    files deleted or renamed away (and folders deleted or moved out); ``rescan`` says events were lost
    (the OS queue overflowed), so anything may have changed. A sync reads the whole folder whatever the
    batch says; the batch says why, for the log and the caller.
    """

    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rescan: bool = False

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed or self.rescan)

    def describe(self) -> str:
        """``2 changed, 1 removed`` (and ``rescan`` when events were lost)."""
        parts = [f"{len(self.changed)} changed", f"{len(self.removed)} removed"]
        return ", ".join(parts + (["events lost: full rescan"] if self.rescan else []))


def _observer_class(polling: bool):
    try:
        if polling:
            from watchdog.observers.polling import PollingObserver

            return PollingObserver
        from watchdog.observers import Observer

        return Observer
    except ImportError:
        raise MissingDependencyError("watchdog", "watch", "watching a folder (--watch, watch:)") from None


def polling_from_env() -> bool:
    """Whether ``RAG_WATCH_POLL`` asks for polling."""
    return os.environ.get(POLL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class CorpusWatcher:
    """Watch a corpus folder; :meth:`next_batch` returns the changes once the folder is quiet.

    Example::

        with CorpusWatcher("docs/", debounce=1.0) as watcher:
            while (batch := watcher.next_batch(stop)) is not None:
                print(batch.describe())

    Args:
        root: the folder to watch (recursively).
        debounce: seconds without a new event before a batch is handed out.
        max_delay: a batch is handed out at the latest this many seconds after its first event.
        polling: poll instead of OS events; ``None``: ``RAG_WATCH_POLL`` decides (default: OS events).
        poll_interval: seconds between two polls (polling only).
        exclude: folders under ``root`` whose events are ignored (an index kept inside its corpus).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        debounce: float = DEBOUNCE_S,
        max_delay: float = MAX_DELAY_S,
        polling: bool | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        exclude: Iterable[str | Path] = (),
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise CorpusError(f"corpus path {root} does not exist")
        if not self.root.is_dir():
            raise InputError(f"cannot watch {root}: not a folder (a watch keeps an index in sync with a folder)")
        for name, value in (("debounce", debounce), ("max_delay", max_delay), ("poll_interval", poll_interval)):
            if not value > 0:
                raise InputError(f"{name} must be a positive number of seconds, got {value}")
        self._real_root = os.path.realpath(self.root)
        self._exclude = tuple(os.path.realpath(p) for p in exclude)
        self.debounce, self.max_delay = float(debounce), max(float(max_delay), float(debounce))
        self.polling = polling_from_env() if polling is None else polling
        self.poll_interval = float(poll_interval)
        self.mode = "not started"
        self._observer = None
        self._cond = threading.Condition()
        self._pending: dict[str, bool] = {}  # relative path -> True: changed, False: removed (last event wins)
        self._rescan = False
        self._first = self._last = 0.0
        self._closed = False

    # -- observer ---------------------------------------------------------------------------------------

    def start(self) -> CorpusWatcher:
        """Start watching (a native observer, or polling when asked or when the native one cannot start)."""
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                try:
                    watcher._on_event(event)
                except Exception:  # an event we cannot read must not stop the observer thread
                    logger.exception("watch: cannot handle %r", event)

        handler = _Handler()
        if not self.polling:
            try:
                self._observer = self._start_observer(_observer_class(False), handler)
            except OSError as exc:  # inotify instance or watch limits reached, no inotify in a container
                logger.warning("watch: file events unavailable for %s (%s); polling every %gs instead",
                               self.root, exc.strerror or exc, self.poll_interval)
        if self._observer is None:
            self._observer = self._start_observer(_observer_class(True), handler, timeout=self.poll_interval)
        name = type(self._observer).__name__
        self.mode = {"InotifyObserver": "inotify", "PollingObserver": "polling", "FSEventsObserver": "fsevents",
                     "KqueueObserver": "kqueue", "WindowsApiObserver": "windows"}.get(name, name)
        logger.info("watching %s (%s)", self.root, self.mode)
        with self._cond:
            closed = self._closed
        if closed:  # stopped while starting: let the observer go too
            self.stop()
        return self

    def _start_observer(self, cls, handler, **options):
        observer = cls(**options)
        try:
            observer.schedule(handler, str(self.root), recursive=True)
            observer.start()
        except BaseException:
            try:
                observer.stop()
            except Exception:  # already failing: report the first error
                pass
            raise
        return observer

    def stop(self) -> None:
        """Stop watching and wake any :meth:`next_batch` waiting (it returns None)."""
        with self._cond:  # taken under the lock: two threads may stop the watcher at once
            self._closed = True
            self._cond.notify_all()
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive() and observer is not threading.current_thread():
                observer.join(timeout=5)

    def __enter__(self) -> CorpusWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events -----------------------------------------------------------------------------------------

    def _relative(self, path: str | bytes) -> str | None:
        """The path relative to the root when the watcher cares about it, else None."""
        path = os.fsdecode(path)
        if not path:
            return None
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if any(real == ex or real.startswith(ex + os.sep) for ex in self._exclude):
            return None
        rel = os.path.relpath(real, self._real_root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        parts = rel.split(os.sep)
        if any(is_ignored(part) for part in parts):
            return None
        return "/".join(parts)

    def _on_event(self, event) -> None:
        kind = event.event_type
        if kind == "events_lost":
            self._note(None, True)
            return
        if kind in ("opened", "closed_no_write", "attrib") or (event.is_directory and kind == "modified"):
            return
        paths: list[tuple[str | bytes, bool]] = []
        if kind == "moved":
            paths = [(event.src_path, False), (event.dest_path, True)]
        elif kind == "deleted":
            paths = [(event.src_path, False)]
        else:  # created, modified, closed (after writing)
            paths = [(event.src_path, True)]
        for path, present in paths:
            rel = self._relative(path)
            if rel is None or not (event.is_directory or reader_for(rel) is not None):
                continue
            self._note(rel, present)

    def _note(self, rel: str | None, present: bool) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._pending and not self._rescan:
                self._first = now
            self._last = now
            if rel is None:
                self._rescan = True
            else:
                self._pending[rel] = present
            self._cond.notify_all()

    def put_back(self, batch: Batch) -> None:
        """Return a batch that could not be applied; newer events for the same paths win."""
        with self._cond:
            if not self._pending and not self._rescan:
                self._first = self._last = time.monotonic()
            for rel in batch.changed:
                self._pending.setdefault(rel, True)
            for rel in batch.removed:
                self._pending.setdefault(rel, False)
            self._rescan |= batch.rescan
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Paths changed since the last batch was handed out."""
        with self._cond:
            return len(self._pending) + int(self._rescan)

    def next_batch(self, stop: threading.Event | None = None, timeout: float | None = None) -> Batch | None:
        """Wait for the next batch: changes followed by ``debounce`` quiet seconds (or ``max_delay`` after the
        first). Returns None when ``stop`` is set, the watcher is stopped, or ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed or (stop is not None and stop.is_set()):
                    return None
                now = time.monotonic()
                wait = 0.2  # how often an outside ``stop`` is looked at
                if self._pending or self._rescan:
                    due = min(self._last + self.debounce, self._first + self.max_delay)
                    if now >= due:
                        return self._take()
                    wait = min(wait, due - now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = min(wait, deadline - now)
                self._cond.wait(wait)

    def _take(self) -> Batch:
        changed = tuple(sorted(rel for rel, present in self._pending.items() if present))
        removed = tuple(sorted(rel for rel, present in self._pending.items() if not present))
        batch = Batch(changed, removed, self._rescan)
        self._pending, self._rescan = {}, False
        return batch


def sync(
    corpus: str | Path,
    config: PipelineConfig,
    index_path: str | Path | None = None,
    batch: Batch | None = None,
    *,
    embedder: Any = None,
    update: bool = False,
    max_file_mb: float = MAX_FILE_MB,
    follow_links: bool = False,
) -> BuildReport:
    """Bring the index at ``index_path`` (default: ``index.path``) in line with the folder ``corpus``.

    An incremental build: the folder is read again, chunks whose text is already in the live version keep
    their vectors, the rest are encoded, and a new version is published atomically (queries keep the
    previous one until the swap). A file that fails to read keeps the documents it had (``keep_failed``);
    a removed file's documents leave. ``batch`` is what the watcher saw (logged); ``embedder`` a loaded
    embedder stage to reuse across syncs; ``update`` requires an existing index built with the same embedder
    (as ``--update``; otherwise an index built with other settings is rebuilt in full).

    Raises:
        IndexLockedError: another writer holds the index's build lock (retry later).
        CorpusError: the folder holds no readable document (the index keeps its last version).
        RagError: as :func:`indexer.build.build_index`.
    """
    if batch is not None:
        logger.info("sync %s: %s", corpus, batch.describe())
    return build_index(
        corpus, config, index_path, update=update, reuse=True, keep_failed=True, embedder=embedder,
        max_file_mb=max_file_mb, follow_links=follow_links,
    )


@dataclass
class SyncStatus:
    """Where a watched folder stands, for logs, the CLI and the server."""

    folder: str
    mode: str = "not started"  # inotify, polling, ...
    syncs: int = 0  # versions published since the start
    last_sync: str | None = None  # UTC time of the last published version
    last_version: str | None = None
    last_batch: str | None = None
    last_error: str | None = None
    last_seconds: float | None = None  # how long the last sync took (read, encode, write, publish)
    pending: int = 0
    running: bool = False


class RetryLater(Exception):
    """Raised by a :class:`FolderWatch` handler that cannot take a batch now (the index is locked, too many
    jobs are queued): the batch goes back, merged with newer changes, and is handed over again later."""


class FolderWatch:
    """Watch a folder and hand each batch of changes to ``on_batch``, in the caller's thread (:meth:`run`)
    or a background thread (:meth:`start` / :meth:`stop`).

    ``on_batch(batch)`` gets None first when ``initial`` (the whole folder, as it is now), then one
    :class:`Batch` per burst of changes. What it returns may be a job with a ``finished`` attribute (a
    server's ingestion job): the next batch waits until it is true, collecting the changes meanwhile.
    It raises :class:`RetryLater` to have the batch handed over again after ``retry_s``; any other
    exception is logged and the batch dropped (the next change brings the folder in line again).

    Example (a served collection, as ``rag-serve`` runs a ``watch:`` section)::

        watch = FolderWatch("docs/", lambda batch: knowledge.submit_changes(
            "docs", "docs/", batch.changed if batch else (), batch.removed if batch else ())).start()
        ...
        watch.stop()
    """

    def __init__(
        self,
        folder: str | Path,
        on_batch: Callable[[Batch | None], Any],
        *,
        initial: bool = True,
        debounce: float = DEBOUNCE_S,
        max_delay: float = MAX_DELAY_S,
        polling: bool | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        exclude: Iterable[str | Path] = (),
        retry_s: float = LOCKED_RETRY_S,
    ) -> None:
        self.folder = Path(folder)
        self.on_batch = on_batch
        self.initial = initial
        self.retry_s = retry_s
        self.watcher = CorpusWatcher(
            self.folder, debounce=debounce, max_delay=max_delay, polling=polling, poll_interval=poll_interval,
            exclude=exclude,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = SyncStatus(folder=str(self.folder))
        self.ready = threading.Event()  # set once the folder is watched and the first batch (if any) handed over

    def prepare(self) -> None:
        """Called in the watching thread before the folder is watched (load what the handler needs)."""

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch and hand over batches in this thread until ``stop`` (or :meth:`stop`) is set. The folder is
        watched before the first hand-over, so nothing changed during it is missed."""
        stop = stop or self._stop

        def stopped() -> bool:
            return stop.is_set() or self._stop.is_set()

        self.prepare()
        self.status.running = True
        self.watcher.start()
        self.status.mode = self.watcher.mode
        try:
            if self.initial and not stopped():
                while not self._deliver(None):  # not now (another writer holds the index): wait for it
                    if stop.wait(self.retry_s) or stopped():
                        return
            self.ready.set()
            while not stopped():
                batch = self.watcher.next_batch(stop)
                if batch is None:
                    continue
                self.status.pending = self.watcher.pending
                if not self._deliver(batch) and not stopped():
                    self.watcher.put_back(batch)
                    stop.wait(self.retry_s)
        finally:
            self.watcher.stop()
            self.status.running = False

    def _deliver(self, batch: Batch | None) -> bool:
        """Hand one batch over and wait for the job it returns; False when it must be handed over again."""
        self.status.last_batch = batch.describe() if batch is not None else "first sync of the folder"
        start = time.perf_counter()
        try:
            result = self.on_batch(batch)
        except RetryLater as exc:
            logger.info("watch %s: %s; again in %gs", self.folder, exc, self.retry_s)
            return False
        except Exception as exc:  # a handler's error must not end the watch
            logger.error("watch %s: %s", self.folder, exc)
            self.status.last_error = str(exc)
            return True
        while getattr(result, "finished", True) is False and not self._stop.is_set():
            time.sleep(0.05)
        if not isinstance(result, BuildReport):
            self.status.last_seconds = round(time.perf_counter() - start, 3)
        return True

    def start(self) -> FolderWatch:
        """Run :meth:`run` in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("this watch is already running")
        self._thread = threading.Thread(target=self._run_logged, name=f"watch {self.folder}", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a background thread has no caller to raise to
            logger.exception("watch %s stopped", self.folder)
            self.status.last_error = f"stopped: {exc}"

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the hand-over in progress (if any) and wait for the thread up to ``timeout`` seconds."""
        self._stop.set()
        self.watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class IndexSync(FolderWatch):
    """Keep an index in sync with a folder: a first sync, then one :func:`sync` per batch of changes.

    Example (a background thread)::

        watch = IndexSync("docs/", config, "indexes/docs").start()
        ...
        watch.stop()

    Args:
        corpus: the folder.
        config: the pipeline config (embedder, chunking, index).
        index_path: the index folder (default: ``index.path``).
        on_sync: called after each sync with ``(batch, report, error)``: the report of a published version,
            or the error that stopped it (the previous version stays live). ``batch`` is None for the first.
        initial: sync the whole folder before the first event (True), or only on events.
        update: the first sync requires an existing, compatible index (``--update``).
        debounce, max_delay, polling, poll_interval: as :class:`CorpusWatcher`.
    """

    def __init__(
        self,
        corpus: str | Path,
        config: PipelineConfig,
        index_path: str | Path | None = None,
        *,
        on_sync: Callable[[Batch | None, BuildReport | None, RagError | None], None] | None = None,
        initial: bool = True,
        update: bool = False,
        debounce: float = DEBOUNCE_S,
        max_delay: float = MAX_DELAY_S,
        polling: bool | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        max_file_mb: float = MAX_FILE_MB,
        follow_links: bool = False,
    ) -> None:
        self.corpus = Path(corpus)
        self.config = config
        self.index_path = Path(index_path or config.index.params.path)
        self.on_sync = on_sync
        self.update = update
        self._options = {"max_file_mb": max_file_mb, "follow_links": follow_links}
        self._embedder = None
        super().__init__(
            self.corpus, self._sync, initial=initial, debounce=debounce, max_delay=max_delay, polling=polling,
            poll_interval=poll_interval, exclude=[self.index_path],
        )

    def prepare(self) -> None:
        from pipeline.pipeline import build_stage

        self._embedder = build_stage(self.config.embedder)  # loaded once, for every sync

    def _sync(self, batch: Batch | None) -> BuildReport | None:
        start = time.perf_counter()
        try:
            report = sync(self.corpus, self.config, self.index_path, batch, embedder=self._embedder,
                          update=self.update and batch is None, **self._options)
        except IndexLockedError as exc:
            raise RetryLater(str(exc)) from None
        except RagError as exc:  # CorpusError (an emptied folder), IndexWriteError (disk full), ...
            message = f"{exc}; the index keeps its last version"
            logger.error("watch %s: %s", self.corpus, message)
            self.status.last_error = message
            if self.on_sync is not None:
                self.on_sync(batch, None, exc)
            return None
        self.status.last_seconds = round(time.perf_counter() - start, 3)
        self.status.syncs += 1
        self.status.last_sync = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.status.last_version = report.version_dir.name
        self.status.last_error = None
        if self.on_sync is not None:
            self.on_sync(batch, report, None)
        return report
