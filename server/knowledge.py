"""Knowledge bases: the server's named collections, their documents, and the jobs that ingest them.

A **collection** is an index with its config. Each distinct index of the served configs is one
(named after the first config serving it; the first is the default, so requests without
``collection`` work as before): queried, never changed by uploads. The others are created over
HTTP under the server's data folder (``server.data_dir``, default ``collections/`` beside the
first config's index), from a served config as template::

    <data_dir>/<name>/
        collection.json    name, template config, creation time (marks a folder the server made)
        documents.json     the documents: id, source, format, bytes, sha256, pages, chunks, state, indexed_at
        corpus/            the uploaded files, under safe names (the corpus the index is built from)
        index/             versions + CURRENT, built by indexer.build_index (crash-safe, build lock)
        incoming/<job>/    files of an upload waiting for their job
        backup/<job>/      files a running job replaced or removed, restored if its build fails
        jobs/<job>.json    each job's state and progress (jobs/<job>.lock: held by the process running it)
        .write.lock        held by the job writing this collection (two servers on one data folder wait)

An ingestion job (:mod:`server.jobs`) reads each new file alone first: a file that fails to read
is reported with the reason and never replaces the document of the same name already there.
Files that read move into ``corpus/`` (the old ones to ``backup/``), then one
:func:`indexer.build.build_index` over the corpus publishes a new version atomically, reusing
the vectors of every unchanged chunk; queries keep answering from the previous version until the
pointer moves (:mod:`server.pipelines` swaps it in per request). A build that fails puts the old
files back. A job killed with SIGKILL leaves the last published version live; the next start
takes its unfinished jobs up again (``resumed``) or reports the files it cannot recover.

Other writers (the watched folder) use :meth:`Knowledge.submit_changes`::

    job = app.state.service.knowledge.submit_changes("kb", folder, changed=["a.md"], removed=["b.pdf"])
    # for a collection served from a config: one incremental rebuild of its index from ``folder``
    # (unchanged chunks keep their vectors); for a created one: the changed files are copied in and
    # the removed ones deleted, as uploads and deletions are. The job is a Job (server.jobs): poll
    # job.state / job.progress, or GET /v1/jobs/{job.id}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from filelock import FileLock, Timeout

from indexer.build import build_index
from indexer.corpus import read_file
from indexer.readers import reader_for
from pipeline.config import PipelineConfig, ServerParams
from pipeline.errors import CorpusError, IndexLockedError, IndexMissingError, RagError
from pipeline.store import CHUNKS, CURRENT, ChunkStore, Manifest, current_version, discard_version, is_own_version
from server.errors import ApiError
from server.jobs import IN_FLIGHT, JOB_ID, Job, JobQueue, new_job_id, now

logger = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
UPLOAD_READERS = ("pdf", "html", "docx", "markdown", "text")  # one file, one document (not JSONL)
COLLECTION_FILE = "collection.json"
DOCUMENTS_FILE = "documents.json"
WRITE_LOCK = ".write.lock"
MAX_NAME_BYTES = 200  # UTF-8 bytes: file systems allow 255
COPY_BLOCK = 1 << 20
KEEP_JOBS = 200  # finished jobs kept per collection (older ones are deleted)
LOCKED_WAIT_S = 600.0  # how long a job waits for another build of its index (a CLI build) to finish


@dataclass(frozen=True)
class Collection:
    """A named index with its config; ``root`` is the server's folder for it (None: served from a config)."""

    name: str
    config: str
    index_path: Path
    root: Path | None = None
    created_at: str | None = None

    @property
    def managed(self) -> bool:
        return self.root is not None

    def sub(self, name: str) -> Path:
        assert self.root is not None
        return self.root / name


def check_file_name(name: str | None) -> str:
    """A file name safe to write under a collection's folder, or a 400/415 that says why not.

    Refused: empty names, path separators, ``.``/``..`` and hidden names, control characters, names
    over 200 bytes of UTF-8, and formats the indexer does not read from one file (415).
    """
    if not name:
        raise ApiError(400, "invalid_file_name", "a file has no name: send each file with a filename")
    name = unicodedata.normalize("NFC", name)
    if ("/" in name or "\\" in name or name.startswith(".") or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES
            or any(unicodedata.category(ch).startswith("C") for ch in name)):
        raise ApiError(400, "invalid_file_name", f"file name {name[:80]!r} is not allowed: send a plain file name "
                       f"(no folders, no leading dot, no control characters, at most {MAX_NAME_BYTES} bytes of UTF-8)")
    reader = reader_for(name)
    if reader is None or reader.NAME not in UPLOAD_READERS:
        raise ApiError(415, "unsupported_format", f"{name!r}: upload PDF, HTML, Word (.docx), Markdown or text files "
                       f"({', '.join(upload_suffixes())})")
    return name


def check_rel_path(rel: str) -> str:
    """A relative path (``a/b.md``) whose every part is a safe name (see :func:`check_file_name`)."""
    parts = rel.replace(os.sep, "/").split("/")
    for part in parts[:-1]:
        if not part or part.startswith(".") or any(unicodedata.category(ch).startswith("C") for ch in part):
            raise ApiError(400, "invalid_file_name", f"path {rel[:80]!r} is not allowed")
    return "/".join([*parts[:-1], check_file_name(parts[-1])])


def upload_suffixes() -> list[str]:
    from indexer.readers import READERS

    return sorted(suffix for suffix, module in READERS.items() if module.NAME in UPLOAD_READERS)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ApiError(500, "damaged", f"{path} cannot be read ({exc})") from None


class _CountingEmbedder:
    """The loaded embedder, encoding in batches and counting them into a job's progress."""

    BATCH = 64

    def __init__(self, inner: Any, job: Job) -> None:
        self._inner, self._job = inner, job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_documents(self, texts, show_progress: bool = False) -> np.ndarray:
        texts = list(texts)
        progress = self._job.progress
        progress["chunks_total"] += len(texts)
        self._job.stage = "encoding"
        self._job.save()
        parts = []
        for start in range(0, len(texts), self.BATCH):
            batch = texts[start:start + self.BATCH]
            parts.append(np.asarray(self._inner.encode_documents(batch), dtype=np.float32))
            progress["chunks_encoded"] += len(batch)
            self._job.save()
        return np.concatenate(parts) if parts else np.zeros((0, self._inner.dimension), dtype=np.float32)


class Knowledge:
    """The collections of one server, their documents and ingestion jobs (see the module docstring).

    Args:
        configs: the served configs, in order (the first is the default).
        index_paths: config name -> its index folder.
        settings: the ``server`` section (data folder and limits).
        embedder_for: the loaded embedder of a config (shared with the queries), or None to load one per job.
        on_job: told of each finished job: its state, each file's outcome, the seconds it ran (metrics).
    """

    def __init__(
        self,
        configs: Mapping[str, PipelineConfig],
        index_paths: Mapping[str, Path],
        settings: ServerParams,
        embedder_for: Callable[[PipelineConfig], Any] | None = None,
        on_job: Callable[[str, list[str], float], None] | None = None,
    ) -> None:
        self.configs = dict(configs)
        self.on_job = on_job
        self.settings = settings
        self.embedder_for = embedder_for
        self.served: dict[str, Collection] = {}
        self.config_collection: dict[str, str] = {}  # config name -> the collection of its index
        by_index: dict[Path, str] = {}
        for name, path in index_paths.items():
            key = Path(path).resolve()
            if key not in by_index:
                by_index[key] = name
                self.served[name] = Collection(name, name, Path(path))
            self.config_collection[name] = by_index[key]
        first = Path(next(iter(index_paths.values())))
        self.data_dir = Path(settings.data_dir) if settings.data_dir else first.resolve().parent / "collections"
        self.queue = JobQueue(self.run_job)
        self._guard = threading.Lock()

    # -- collections ----------------------------------------------------------------------------------

    @property
    def default(self) -> str:
        return next(iter(self.served))

    def collections(self) -> list[Collection]:
        """The served collections, then those created here, by name."""
        created = []
        if self.data_dir.is_dir():
            for entry in sorted(self.data_dir.iterdir()):
                if NAME.fullmatch(entry.name) and entry.name not in self.served:
                    col = self._created(entry.name)
                    if col is not None:
                        created.append(col)
        return [*self.served.values(), *created]

    def _created(self, name: str) -> Collection | None:
        root = self.data_dir / name
        meta_path = root / COLLECTION_FILE
        if root.is_symlink() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        config = meta.get("config")
        if config not in self.configs:
            logger.warning("collection %s uses config %r, which this server does not serve", name, config)
            return None
        return Collection(name, config, root / "index", root, meta.get("created_at"))

    def get(self, name: str) -> Collection:
        """The collection called ``name``; 404 when there is none."""
        col = self.served.get(name)
        if col is None and isinstance(name, str) and NAME.fullmatch(name):
            col = self._created(name)
        if col is None:
            names = ", ".join(c.name for c in self.collections())
            raise ApiError(404, "not_found", f"no collection {str(name)[:80]!r}; this server has: {names}")
        return col

    def managed(self, name: str) -> Collection:
        col = self.get(name)
        if not col.managed:
            raise ApiError(409, "read_only_collection", f"collection {name!r} is the index of config {col.config!r}, "
                           "built by rag-build; create a collection (POST /v1/collections) to upload documents")
        return col

    def create(self, name: str, config: str | None) -> Collection:
        """Create an empty collection ``name`` with the served config ``config`` (default: the first) as template."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiError(422, "invalid_request", f"collection name {str(name)[:80]!r}: use 1-64 lowercase letters, "
                           "digits, '-' or '_', starting with a letter or digit")
        config = config or next(iter(self.configs))
        if config not in self.configs:
            raise ApiError(422, "invalid_request", f"unknown config {config!r}; this server has: "
                           f"{', '.join(self.configs)}")
        if name in self.served or name in self.configs:
            raise ApiError(409, "exists", f"{name!r} is already a collection or config of this server")
        root = self.data_dir / name
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            root.mkdir()
        except FileExistsError:
            raise ApiError(409, "exists", f"collection {name!r} exists (or {root} is in the way)") from None
        except OSError as exc:
            raise ApiError(500, "write_error", f"cannot create {root}: {exc.strerror or exc}") from None
        for sub in ("corpus", "index", "incoming", "backup", "jobs"):
            (root / sub).mkdir()
        created = now()
        _write_json(root / DOCUMENTS_FILE, {"documents": {}})
        _write_json(root / COLLECTION_FILE, {"name": name, "config": config, "created_at": created,
                                             "created_by": "rerank-rag"})
        logger.info("created collection %s (config %s) at %s", name, config, root)
        return Collection(name, config, root / "index", root, created)

    def delete(self, name: str) -> dict[str, Any]:
        """Delete a created collection: only what the server wrote there; anything else is left and named."""
        col = self.managed(name)
        if self.queue.busy(name):
            raise ApiError(409, "busy", f"collection {name!r} has an ingestion job in flight; wait for it to finish")
        lock = FileLock(str(col.sub(WRITE_LOCK)), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ApiError(409, "busy", f"collection {name!r} is being written by another job; try again") from None
        try:
            registry = self._registry(col)
            (col.root / COLLECTION_FILE).unlink(missing_ok=True)  # from here on it is no collection
            for doc_id in registry:
                _unlink_file(col.sub("corpus") / doc_id)
            index = col.index_path
            if index.is_dir() and not index.is_symlink():
                for item in index.iterdir():
                    if item.name.startswith("v-") and is_own_version(item):
                        discard_version(item)
                    elif item.name in (CURRENT, f".{CURRENT}.tmp", ".lock") and item.is_file():
                        item.unlink()
            for sub in ("incoming", "backup"):
                folder = col.sub(sub)
                if folder.is_dir() and not folder.is_symlink():
                    for job_dir in folder.iterdir():
                        if JOB_ID.fullmatch(job_dir.name) and job_dir.is_dir() and not job_dir.is_symlink():
                            shutil.rmtree(job_dir, ignore_errors=True)
            jobs = col.sub("jobs")
            if jobs.is_dir() and not jobs.is_symlink():
                for item in jobs.iterdir():
                    if JOB_ID.fullmatch(item.name.rsplit(".", 1)[0]) and item.is_file():
                        item.unlink()
            (col.root / DOCUMENTS_FILE).unlink(missing_ok=True)
        finally:
            lock.release()
        col.sub(WRITE_LOCK).unlink(missing_ok=True)
        left = _remove_empty_folders(col.root)
        if left:
            logger.warning("collection %s deleted; left what the server did not write: %s", name, ", ".join(left))
        return {"deleted": name, "left": left}

    # -- documents --------------------------------------------------------------------------------------

    def _registry(self, col: Collection) -> dict[str, dict[str, Any]]:
        return _read_json(col.root / DOCUMENTS_FILE, {"documents": {}}).get("documents", {})

    def _save_registry(self, col: Collection, documents: dict[str, dict[str, Any]]) -> None:
        _write_json(col.root / DOCUMENTS_FILE, {"documents": documents})

    def counts(self, col: Collection) -> tuple[int, int]:
        """(documents, chunks) of a collection, without reading its chunks."""
        if not col.managed:
            return index_counts(col.index_path)
        documents = self._registry(col).values()
        return len(documents), sum(d.get("chunks") or 0 for d in documents)

    def documents(self, name: str) -> list[dict[str, Any]]:
        """The documents of a collection: id, source, format, pages, chunks, indexed_at (and state, size, hash)."""
        col = self.get(name)
        if col.managed:
            return sorted(self._registry(col).values(), key=lambda d: d["id"])
        return _index_documents(col.index_path)

    def stage_upload(self, name: str, uploads: list[tuple[str | None, BinaryIO]]) -> tuple[Job | None, list[dict]]:
        """Write an upload's files under the collection's ``incoming/`` and queue the job that ingests them.

        Every name is checked before anything is written; a file over ``max_upload_mb`` fails the whole
        request (413) and leaves nothing behind. Files whose content the collection already has (same
        SHA-256) are answered ``duplicate`` and not indexed again. Returns the job (None when every file
        was a duplicate) and one entry per file.
        """
        col = self.managed(name)
        settings = self.settings
        if not uploads:
            raise ApiError(422, "invalid_request", "no files: send them as multipart/form-data fields named 'files'")
        if len(uploads) > settings.max_upload_files:
            raise ApiError(413, "too_many_files", f"{len(uploads)} files in one request; the limit is "
                           f"{settings.max_upload_files} (server.max_upload_files)")
        names = [check_file_name(filename) for filename, _ in uploads]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ApiError(422, "invalid_request", f"two files are named {twice!r} in one request")
        job = self._new_job(col)
        staging = col.sub("incoming") / job.id
        max_bytes = int(settings.max_upload_mb * 2**20)
        registry = self._registry(col)
        leaving = {doc_id for job in self.queue.jobs() if job.collection == name and not job.finished
                   for doc_id in job.removes}  # a deletion queued here: uploading it again is no duplicate
        by_hash = {doc["sha256"]: doc_id for doc_id, doc in registry.items()
                   if doc.get("sha256") and doc.get("state") != "deleting" and doc_id not in leaving}
        entries: list[dict[str, Any]] = []
        if not self.queue.claim(job):
            raise ApiError(409, "busy", f"job {job.id} is held by another process")
        job.state = job.stage = "receiving"  # a server killed now leaves this: the next start cleans up
        try:
            job.save()
            staging.mkdir(parents=True)
            for filename, (_, stream) in zip(names, uploads):
                digest, size = _copy_bounded(stream, staging / filename, max_bytes)
                entry = {"name": filename, "sha256": digest, "bytes": size}
                if digest in by_hash:
                    (staging / filename).unlink()
                    entries.append({**entry, "state": "duplicate", "duplicate_of": by_hash[digest]})
                    continue
                by_hash[digest] = filename  # a second copy in this request is a duplicate too
                job.adds.append(entry)
                entries.append({**entry, "state": "queued", **({"replaces": filename} if filename in registry else {})})
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            job.path.unlink(missing_ok=True)
            self.queue.release(job)
            if isinstance(exc, OSError):
                raise ApiError(507, "write_error", f"cannot store the upload ({exc.strerror or exc}); "
                               "nothing of it was kept") from None
            raise
        if not job.adds:
            shutil.rmtree(staging, ignore_errors=True)
            job.path.unlink(missing_ok=True)
            self.queue.release(job)
            return None, entries
        job.state = job.stage = "queued"
        job.progress["files_total"] = len(job.adds)
        return self.queue.submit(job), entries

    def delete_document(self, name: str, doc_id: str) -> Job:
        """Queue a job that removes one document: its chunks leave the index in the next version."""
        col = self.managed(name)
        coming = {add["name"] for job in self.queue.jobs() if job.collection == name and not job.finished
                  for add in job.adds}  # uploaded, its job still queued or running: deleted after it
        if doc_id not in coming and self._registry(col).get(doc_id) is None:
            raise ApiError(404, "not_found", f"collection {name!r} has no document {doc_id[:200]!r}")
        job = self._new_job(col)
        job.removes.append(doc_id)
        return self._submit(job)

    def submit_changes(self, name: str, folder: str | Path, changed: Iterable[str] = (),
                       removed: Iterable[str] = ()) -> Job:
        """Queue one incremental job for files of ``folder`` that changed or were removed (the watched folder).

        ``changed`` and ``removed`` are paths relative to ``folder``. For a collection served from a config,
        the job rebuilds its index from ``folder`` (unchanged chunks keep their vectors; the names only
        label the job). For a created collection, the changed files are copied in (a file that fails to
        read keeps the document it would replace) and the removed ones deleted. Returns the queued job.
        """
        col = self.get(name)
        folder = Path(folder)
        changed, removed = list(changed), list(removed)
        job = self._new_job(col)
        if not col.managed:
            job.folder = str(folder.resolve())
            job.adds = [{"name": rel} for rel in changed]
            job.removes = list(removed)
            job.progress["files_total"] = len(changed)
            return self._submit(job)
        staging = col.sub("incoming") / job.id
        max_bytes = int(self.settings.max_upload_mb * 2**20)
        registry = self._registry(col)
        for rel in changed:
            try:
                rel = check_rel_path(rel)
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(folder / rel, "rb") as stream:
                    digest, size = _copy_bounded(stream, target, max_bytes)
            except (ApiError, OSError) as exc:
                job.fail_file(rel, getattr(exc, "message", None) or f"unreadable: {exc}")
                continue
            job.adds.append({"name": rel, "sha256": digest, "bytes": size})
        job.removes = [rel for rel in removed if rel in registry]
        job.progress["files_total"] = len(job.adds)
        return self._submit(job)

    def _new_job(self, col: Collection) -> Job:
        if self.queue.in_flight() >= self.settings.max_jobs:
            raise ApiError(429, "too_many_jobs", f"{self.settings.max_jobs} ingestion jobs are queued or running "
                           "(server.max_jobs); try again when one has finished", {"Retry-After": "5"})
        jobs_dir = col.sub("jobs") if col.managed else self.data_dir / f".{col.name}-jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        job_id = new_job_id()
        return Job(job_id, col.name, path=jobs_dir / f"{job_id}.json")

    def _submit(self, job: Job) -> Job:
        if not self.queue.claim(job):
            raise ApiError(409, "busy", f"job {job.id} is held by another process")
        return self.queue.submit(job)

    # -- jobs -------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        """A job by id: this process's, or one saved by another process or an earlier run; 404 if none."""
        job = self.queue.get(job_id) if JOB_ID.fullmatch(job_id or "") else None
        if job is None and JOB_ID.fullmatch(job_id or ""):
            for path in self._job_folders():
                if (path / f"{job_id}.json").is_file():
                    return Job.read(path / f"{job_id}.json")
        if job is None:
            raise ApiError(404, "not_found", f"no job {str(job_id)[:80]!r}")
        return job

    def jobs(self, name: str) -> list[Job]:
        col = self.get(name)
        folder = col.sub("jobs") if col.managed else self.data_dir / f".{col.name}-jobs"
        mine = {job.id: job for job in self.queue.jobs() if job.collection == name}
        found = []
        if folder.is_dir():
            for path in sorted(folder.glob("j-*.json")):
                job_id = path.stem
                try:
                    found.append(mine.pop(job_id, None) or Job.read(path))
                except (OSError, ValueError, TypeError):
                    continue
        return [*found, *mine.values()]

    def _job_folders(self) -> list[Path]:
        folders = [c.sub("jobs") for c in self.collections() if c.managed]
        folders += [self.data_dir / f".{c.name}-jobs" for c in self.served.values()]
        return [f for f in folders if f.is_dir()]

    def resume(self) -> list[Job]:
        """At start: take up the jobs a stopped or killed process left queued or running (those no live
        process holds), so their files are indexed now or reported as lost. Returns them."""
        resumed = []
        for folder in self._job_folders():
            for path in sorted(folder.glob("j-*.json")):
                try:
                    job = Job.read(path)
                except (OSError, ValueError, TypeError):
                    logger.warning("job file %s is unreadable; left alone", path)
                    continue
                if job.state not in IN_FLIGHT or not self.queue.claim(job):
                    continue
                if job.state == "receiving":  # stopped while the upload came in: nothing of it is indexed
                    logger.warning("job %s of collection %s: the server stopped while its upload came in; "
                                   "nothing of it was indexed", job.id, job.collection)
                    shutil.rmtree(path.parent.parent / "incoming" / job.id, ignore_errors=True)
                    job.state = job.stage = "failed"
                    job.error, job.finished_at = "the server stopped while the upload came in: upload again", now()
                    job.save()
                    self.queue.release(job)
                    continue
                logger.warning("resuming job %s of collection %s, left %s by a stopped server",
                               job.id, job.collection, job.state)
                job.resumed += 1
                job.state, job.stage = "queued", "queued (resumed after a restart)"
                resumed.append(self.queue.submit(job))
        return resumed

    def run_job(self, job: Job) -> None:
        """Run one job (on the queue's worker thread); its outcome is in ``job.state`` and the saved JSON."""
        job.state, job.started_at = "running", now()
        started = time.monotonic()
        job.stage = "waiting for the collection"
        if job.resumed:
            job.progress["files_read"] = 0  # counted again as the job goes over its files
        job.save()
        try:
            col = self.get(job.collection)
            if col.managed:
                with FileLock(str(col.sub(WRITE_LOCK))):  # another server's job on this collection: wait
                    self._ingest(job, col)
            else:
                self._rebuild_from_folder(job, col)
        except (RagError, ApiError, OSError) as exc:
            job.state, job.error = "failed", getattr(exc, "message", None) or str(exc)
            logger.error("job %s failed: %s", job.id, job.error)
        job.stage, job.finished_at = job.state, now()
        job.save()
        _prune_jobs(job.path.parent, keep=KEEP_JOBS)
        if self.on_job is not None:
            self.on_job(job.state, [f["state"] for f in job.files], time.monotonic() - started)

    def _build(self, job: Job, col: Collection, corpus: Path, **kwargs: Any):
        """build_index into the collection's index; waits while another build (a CLI one) holds the lock."""
        config = self.configs[col.config]
        if self.embedder_for is not None:
            kwargs["embedder"] = _CountingEmbedder(self.embedder_for(config), job)
        deadline = time.monotonic() + LOCKED_WAIT_S
        while True:
            job.stage = "building"
            job.save()
            try:
                return build_index(corpus, config, col.index_path, reuse=True,
                                   max_file_mb=self.settings.max_upload_mb, **kwargs)
            except IndexLockedError:
                if time.monotonic() > deadline:
                    raise
                job.stage = "waiting for another build of this index"
                job.save()
                time.sleep(0.5)

    def _rebuild_from_folder(self, job: Job, col: Collection) -> None:
        report = self._build(job, col, Path(job.folder), keep_failed=True)
        job.progress["files_read"] = report.manifest.counts.get("documents", 0)
        for where, why in report.skipped:
            job.fail_file(where, why)
        job.progress["chunks_encoded"] = report.changes.get("encoded_chunks", 0)
        job.version = report.version_dir.name
        job.state = "done"

    def _ingest(self, job: Job, col: Collection) -> None:
        """Apply a job's adds and removes to the corpus, build, and record the documents (see module docstring)."""
        registry = self._registry(col)
        corpus, staging, backup = col.sub("corpus"), col.sub("incoming") / job.id, col.sub("backup") / job.id
        moved: list[str] = []  # files moved into the corpus by this job (old ones in backup/)
        removed: list[str] = []
        job.stage = "reading"
        job.save()
        settled = {f["name"] for f in job.files}  # failed or duplicate before a restart
        arriving: list[str] = []  # read well: recorded first, then moved into the corpus
        for add in job.adds:
            name, digest = add["name"], add.get("sha256")
            if name in settled:
                continue
            staged, record = staging / name, registry.get(name)
            if record is not None and record.get("job") == job.id:  # this job got that far before a restart
                if staged.is_file() or (corpus / name).is_file():
                    job.progress["files_read"] += 1
                    arriving.append(name)
                    continue
                if record.get("replaces") is not None and (backup / name).is_file():
                    os.replace(backup / name, corpus / name)  # the document it was to replace stays
                    registry[name] = record["replaces"]
                else:
                    registry.pop(name)
                job.fail_file(name, "the uploaded file was lost when the server stopped: upload it again")
                continue
            if not staged.is_file():
                job.fail_file(name, "the uploaded file was lost when the server stopped: upload it again")
                continue
            same = next((d for d, r in registry.items()
                         if r.get("sha256") == digest and r["state"] != "deleting" and r.get("job") != job.id), None)
            if same is not None:
                staged.unlink()
                job.progress["duplicates"] += 1
                job.files.append({"name": name, "state": "duplicate", "duplicate_of": same})
                continue
            problem, facts = _try_read(staged, self.settings.max_upload_mb)
            if problem is not None:
                staged.unlink()
                job.fail_file(name, problem)
                job.save()
                continue
            job.progress["files_read"] += 1
            registry[name] = {"id": name, "source": name, **facts, "bytes": add.get("bytes"), "sha256": digest,
                              "chunks": None, "state": "indexing", "uploaded_at": job.created_at,
                              "indexed_at": None, "version": None, "job": job.id,
                              **({"replaces": record} if record is not None and record["state"] == "indexed" else {})}
            arriving.append(name)
        self._save_registry(col, registry)  # before any file moves: a restart finds what this job took on
        for name in arriving:
            staged, target = staging / name, corpus / name
            if staged.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                if (target.exists() or target.is_symlink()) and not (backup / name).exists():
                    (backup / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(target, backup / name)  # the document it replaces, until the build succeeds
                os.replace(staged, target)
            moved.append(name)
        job.save()
        for doc_id in job.removes:
            target = corpus / doc_id
            if target.is_file() or target.is_symlink():
                (backup / doc_id).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, backup / doc_id)
            elif not (backup / doc_id).exists():
                registry.pop(doc_id, None)
                job.files.append({"name": doc_id, "state": "removed"})
                continue
            if doc_id in registry:
                registry[doc_id]["state"] = "deleting"
            removed.append(doc_id)
        self._save_registry(col, registry)
        if not moved and not removed:
            job.state = "done" if not job.failures else "failed"
            job.error = None if not job.failures else "no file could be read"
            shutil.rmtree(staging, ignore_errors=True)
            return
        try:
            if any(p.is_file() for p in corpus.rglob("*")):
                report = self._build(job, col, corpus)
                version, store_path = report.version_dir.name, report.version_dir / CHUNKS
            else:  # the last document left: the collection is empty, no version answers
                (col.index_path / CURRENT).unlink(missing_ok=True)
                version, store_path = None, None
        except BaseException as exc:
            self._restore(col, registry, moved, removed, backup)
            if isinstance(exc, CorpusError):
                raise ApiError(422, "invalid_request", f"nothing in the collection could be read: {exc}") from None
            raise
        chunks: dict[str, int] = {}
        if store_path is not None:
            store = ChunkStore(store_path)
            try:
                chunks = {doc_id: count for doc_id, _, count in store.document_counts()}
            finally:
                store.close()
        indexed_at = now()
        for name in moved:
            record = registry[name]
            record.pop("replaces", None)
            record.update(state="indexed", chunks=chunks.get(name, 0), indexed_at=indexed_at, version=version)
            job.files.append({"name": name, "state": "indexed", "chunks": record["chunks"]})
        for doc_id in removed:
            registry.pop(doc_id, None)
            job.progress["removed"] += 1
            job.files.append({"name": doc_id, "state": "removed"})
        self._save_registry(col, registry)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
        job.version = version
        job.state = "done"
        if job.failures and not moved and not removed:
            job.state, job.error = "failed", "no file could be read"

    def _restore(self, col: Collection, registry: dict, moved: list[str], removed: list[str], backup: Path) -> None:
        """After a failed build: the corpus and the documents as they were before the job."""
        corpus = col.sub("corpus")
        for name in moved:
            old = registry[name].get("replaces")
            if (backup / name).exists():
                os.replace(backup / name, corpus / name)
            else:
                _unlink_file(corpus / name)
            if old is not None:
                registry[name] = old
            else:
                registry.pop(name, None)
        for doc_id in removed:
            if (backup / doc_id).exists():
                os.replace(backup / doc_id, corpus / doc_id)
            if doc_id in registry:
                registry[doc_id]["state"] = "indexed"
        self._save_registry(col, registry)


def _try_read(path: Path, max_file_mb: float) -> tuple[str | None, dict[str, Any]]:
    """Read one file as the build will: (None, its facts) or (the reason it cannot be indexed, {})."""
    try:
        documents, skipped = read_file(path, path.name, max_file_mb)
    except Exception as exc:  # a reader's library failing in a way it does not foresee: this file only
        logger.warning("reading %s failed: %s: %s", path.name, type(exc).__name__, exc)
        return f"unreadable ({type(exc).__name__}: {str(exc)[:200]})", {}
    if skipped:
        return skipped[0][1], {}
    if not documents or not any(doc.full_text.strip() for doc in documents):
        return "no text in it", {}
    doc = documents[0]
    return None, {"format": doc.metadata.get("format") or reader_for(path.name).NAME,
                  "pages": doc.metadata.get("pages"), "title": doc.title or None}


def _copy_bounded(stream: BinaryIO, target: Path, max_bytes: int) -> tuple[str, int]:
    """Copy ``stream`` into a new regular file ``target`` (never through a link); 413 over ``max_bytes``."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        while block := stream.read(COPY_BLOCK):
            size += len(block)
            if size > max_bytes:
                raise ApiError(413, "too_large", f"{target.name!r} is over {max_bytes / 2**20:g} MB "
                               "(server.max_upload_mb); nothing of this request was kept")
            digest.update(block)
            out.write(block)
    return digest.hexdigest(), size


def _prune_jobs(folder: Path, keep: int) -> None:
    """Delete the oldest finished jobs' files beyond the newest ``keep`` (job ids sort by creation)."""
    paths = sorted(folder.glob("j-*.json"))
    for path in paths[: max(len(paths) - keep, 0)]:
        try:
            if Job.read(path).state not in IN_FLIGHT:
                path.unlink()
                path.with_suffix(".lock").unlink(missing_ok=True)
        except (OSError, ValueError, TypeError):
            continue


def _unlink_file(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()


def _remove_empty_folders(root: Path) -> list[str]:
    """Remove the empty folders under ``root`` and ``root`` itself; name what is left (not ours)."""
    left = []
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            left.append(os.path.relpath(os.path.join(folder, name), root))
        try:
            os.rmdir(folder)
        except OSError:
            pass
    return sorted(left)


def _index_documents(index_path: Path) -> list[dict[str, Any]]:
    """The documents of a built index (from its chunk store): what a collection served from a config holds."""
    try:
        version = current_version(index_path)
        manifest = Manifest.read(version)
        store = ChunkStore(version / CHUNKS)
    except IndexMissingError:
        return []
    try:
        counts = store.document_counts()
        chunks = store.get([first for _, first, _ in counts])
    finally:
        store.close()
    out = []
    for doc_id, first, count in counts:
        chunk = chunks.get(first)
        meta = chunk.metadata if chunk is not None else {}
        out.append({"id": doc_id, "source": chunk.source if chunk is not None else doc_id,
                    "format": meta.get("format"), "pages": meta.get("pages"), "chunks": count,
                    "state": "indexed", "indexed_at": manifest.created_at, "version": version.name})
    return out


def index_counts(index_path: Path) -> tuple[int, int]:
    """(documents, chunks) of an index's live version, from its manifest; (0, 0) when it has none."""
    try:
        counts = Manifest.read(current_version(index_path)).counts
    except IndexMissingError:
        return 0, 0
    return int(counts.get("documents", 0)), int(counts.get("chunks", 0))
