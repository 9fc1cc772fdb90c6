"""Ingestion jobs: what one upload, deletion or folder sync asks for, its progress, and the thread that runs them.

A :class:`Job` is saved as JSON in its collection's ``jobs/`` folder at every step, so
``GET /v1/jobs/{id}`` answers from any process and a restart finds the jobs a killed
process left unfinished (``queued`` or ``running``). While a process owns a job it holds
the job's lock file (``jobs/<id>.lock``, released by the kernel when the process dies),
so a second server on the same data folder never resumes a job that is still running.

:class:`JobQueue` runs jobs one at a time, in the order they came, on one worker thread
(ingestion encodes with the CPU the queries also need; one job at a time keeps queries
answering). What a job does is :meth:`server.knowledge.Knowledge.run_job`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"j-\d{8}T\d{12}-[0-9a-f]{8}")  # sorts in the order the jobs were made
STATES = ("receiving", "queued", "running", "done", "failed")
IN_FLIGHT = ("receiving", "queued", "running")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_job_id() -> str:
    return f"j-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"


@dataclass
class Job:
    """One ingestion job of a collection (the JSON of ``GET /v1/jobs/{id}``).

    ``state``: ``receiving`` (its upload is being written), ``queued``, ``running``, ``done`` or ``failed``.
    ``adds``: the files to add or replace (``{"name", "sha256", "bytes"}``; staged in the collection's
    ``incoming/<id>/``); ``removes``: document ids to delete; ``folder``: for a collection served from
    a config, the folder to rebuild from. ``files`` holds each file's outcome (``indexed``,
    ``duplicate``, ``failed`` with its ``reason``, ``removed``), ``progress`` the counters.
    """

    id: str
    collection: str
    adds: list[dict[str, Any]] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    folder: str | None = None
    state: str = "queued"
    stage: str = "queued"
    created_at: str = field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    progress: dict[str, int] = field(default_factory=lambda: {
        "files_total": 0, "files_read": 0, "files_failed": 0, "duplicates": 0, "removed": 0,
        "chunks_total": 0, "chunks_encoded": 0})
    files: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    version: str | None = None
    error: str | None = None
    resumed: int = 0  # times a restarted server took this job up again
    path: Path | None = field(default=None, repr=False)  # where it is saved (not part of the JSON)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out

    @classmethod
    def read(cls, path: Path) -> Job:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"}
        return cls(**known, path=path)

    def save(self) -> None:
        """Write the job's JSON atomically (a reader sees the old state or the new one)."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # its collection deleted meanwhile, or a full disk: the job goes on in memory
            logger.warning("cannot save job %s (%s)", self.id, exc.strerror or exc)
            tmp.unlink(missing_ok=True)

    def fail_file(self, name: str, reason: str) -> None:
        self.failures.append({"file": name, "reason": reason})
        self.files.append({"name": name, "state": "failed", "reason": reason})
        self.progress["files_failed"] += 1

    @property
    def finished(self) -> bool:
        return self.state not in IN_FLIGHT


class JobQueue:
    """Jobs run one at a time on one worker thread; ``run(job)`` does the work and sets the job's state.

    Args:
        run: called with each job on the worker thread; it saves the job as it goes.
    """

    def __init__(self, run: Callable[[Job], None]) -> None:
        self._run = run
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._locks: dict[str, FileLock] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def claim(self, job: Job) -> bool:
        """Take the job's lock file for this process; False when another live process holds it."""
        lock = FileLock(str(job.path.with_suffix(".lock")), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return False
        with self._guard:
            self._locks[job.id] = lock
        return True

    def release(self, job: Job) -> None:
        """Let go of a claimed job that will not run (its upload failed, or it was settled at start)."""
        with self._guard:
            lock = self._locks.pop(job.id, None)
            self._jobs.pop(job.id, None)
        if lock is not None:
            lock.release()

    def submit(self, job: Job) -> Job:
        """Queue a claimed job (see :meth:`claim`); it is saved and started by the worker thread."""
        with self._guard:
            self._jobs[job.id] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ingest", daemon=True)
                self._thread.start()
        job.save()
        self._queue.put(job)
        return job

    def in_flight(self) -> int:
        with self._guard:
            return sum(1 for job in self._jobs.values() if not job.finished)

    def busy(self, collection: str) -> bool:
        with self._guard:
            return any(job.collection == collection and not job.finished for job in self._jobs.values())

    def get(self, job_id: str) -> Job | None:
        with self._guard:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._guard:
            return list(self._jobs.values())

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # a bug: the job fails with the reason, the worker goes on
                logger.exception("job %s failed", job.id)
                job.state, job.stage, job.error, job.finished_at = "failed", "failed", f"internal error: {exc}", now()
                job.save()
            finally:
                with self._guard:
                    lock = self._locks.pop(job.id, None)
                if lock is not None:
                    lock.release()

    def close(self) -> None:
        self._queue.put(None)
