"""Build an index from a corpus folder: read, chunk, encode, index, publish atomically.

Rebuilding reuses the live version's vectors for every chunk whose text is
unchanged (same embedder settings), so an unchanged corpus encodes nothing and
an edited one encodes only what changed. The result is the same index a full
build gives: same chunk order, same ids, same vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from indexer.chunking import chunk_documents
from indexer.corpus import MAX_FILE_MB, read_corpus
from pipeline.config import PipelineConfig
from pipeline.errors import (
    IndexLockedError,
    IndexMismatchError,
    IndexMissingError,
    IndexWriteError,
    InputError,
    RagError,
)
from pipeline.store import (
    CHUNKS,
    EMBEDDINGS,
    VERSION_MARKER,
    ChunkStore,
    Manifest,
    current_version,
    discard_version,
    is_own_version,
    mark_version,
    publish_version,
)
from pipeline.types import Chunk, Document
from pipeline.versions import package_versions

logger = logging.getLogger(__name__)

LOCK = ".lock"
KEEP_PREVIOUS = 1  # old versions kept after a swap, for readers still loading them
ENGINES = ("local", "ray")  # where chunking and encoding run


@dataclass(frozen=True)
class BuildReport:
    """What a build produced: where, its manifest, what was skipped, and what changed."""

    path: Path
    version_dir: Path
    manifest: Manifest
    skipped: list[tuple[str, str]]
    changes: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # old or unfinished version folders this build deleted
    unsupported: list[str] = field(default_factory=list)  # files no reader reads, by name
    kept: list[str] = field(default_factory=list)  # failed files whose previous documents stay (keep_failed)


@dataclass
class _Previous:
    """The live version's vectors, looked up by chunk text."""

    rows: dict[str, int]
    embeddings: np.ndarray
    doc_texts: dict[str, list[str]]
    version: Path | None = None


def embedding_manifest(config: PipelineConfig, embedder) -> dict:
    """The embedder facts an index depends on (compared at load time and before reusing vectors)."""
    params = config.embedder.params
    return {
        "type": config.embedder.type,
        "model": params.model,
        "dimension": embedder.dimension,
        "normalize": params.normalize,
        "max_length": embedder.max_length,
        "document_prompt": params.document_prompt,
        **(embedder.manifest_facts() if hasattr(embedder, "manifest_facts") else {}),  # engine, variant, version
    }


def build_index(
    corpus_path: str | Path,
    config: PipelineConfig,
    index_path: str | Path | None = None,
    *,
    update: bool = False,
    reuse: bool = True,
    show_progress: bool = False,
    max_file_mb: float = MAX_FILE_MB,
    engine: str = "local",
    reuse_from: str | Path | None = None,
    follow_links: bool = False,
    keep_failed: bool = False,
    embedder: Any = None,
) -> BuildReport:
    """Index every document under ``corpus_path`` into ``index_path`` (default: ``index.path``).

    The new index is written to a fresh version folder and published with an
    atomic pointer swap; on any failure the previous index stays live.

    Args:
        update: require an existing index built with the same embedder, and
            report which documents were added, changed and removed.
        reuse: take vectors of unchanged chunks from the live index (False
            re-encodes everything).
        reuse_from: another index path whose live vectors may be reused (same
            embedder settings), when this one has none yet; e.g. the same corpus
            in another vector store.
        engine: ``local`` chunks and encodes in this process; ``ray`` runs both
            as Ray Data pipelines (the config's ``ray`` section; see
            :mod:`indexer.ray_engine`). Everything else is the same.
        follow_links: also read symlinks that lead outside the corpus folder
            (by default they are skipped and counted).
        keep_failed: a file that fails to read (half-written, corrupt, emptied)
            keeps the chunks and vectors it has in the live version instead of
            leaving the index; a removed file still leaves it (the watch mode).
        embedder: a ready embedder stage of ``config.embedder`` to reuse across
            builds (default: a new one, loaded for this build).

    Raises:
        CorpusError: nothing readable in the corpus.
        IndexLockedError: another build of the same index is running.
        IndexMismatchError / IndexMissingError: ``update`` without a compatible index.
        ModelNotFoundError: the embedder cannot be loaded.
        InputError: ``index_path`` is a file.
        IndexWriteError: the index folder cannot be written (read-only, disk full).
    """
    from pipeline.pipeline import build_stage

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; valid choices: {', '.join(ENGINES)}")
    index_path = Path(index_path or config.index.params.path)
    lock = _lock(index_path)
    try:
        removed = _remove_unfinished(index_path)
        times: dict[str, float] = {}
        start = time.perf_counter()
        corpus = read_corpus(corpus_path, max_file_mb=max_file_mb, follow_links=follow_links)
        times["read"] = time.perf_counter() - start

        start = time.perf_counter()
        embedder = embedder if embedder is not None else build_stage(config.embedder)
        facts = embedding_manifest(config, embedder)
        times["load_model"] = time.perf_counter() - start

        with ExitStack() as stack:
            ray_engine = None
            if engine == "ray":
                from indexer.ray_engine import RayEngine

                start = time.perf_counter()
                ray_engine = stack.enter_context(RayEngine(config.ray, index_path, show_progress=show_progress))
                times["ray_start"] = time.perf_counter() - start
            start = time.perf_counter()
            if ray_engine is None:
                chunks = _chunk(corpus.documents, config, embedder, show_progress)
            else:
                chunks = ray_engine.chunk(corpus.documents, config.embedder, config.chunking)
            times["chunk"] = time.perf_counter() - start
            logger.info("%d documents -> %d chunks", len(corpus.documents), len(chunks))

            previous = _load_previous(index_path, facts, strict=update) if (reuse or update) else None
            if previous is None and reuse and reuse_from is not None:
                previous = _load_previous(Path(reuse_from), facts, strict=False)
            kept, kept_documents = [], 0
            if keep_failed and previous is not None:
                kept, kept_documents = _keep_failed(chunks, corpus.skipped, previous)
            start = time.perf_counter()
            if ray_engine is None:
                encode = partial(embedder.encode_documents, show_progress=show_progress)
            else:
                encode = partial(ray_engine.encode, embedder=config.embedder)
            vectors, encoded = _embed(chunks, embedder.dimension, previous, encode)
            times["encode"] = time.perf_counter() - start
        changes = _changes(chunks, previous, encoded)

        start = time.perf_counter()
        index = build_stage(config.index)
        index.build(vectors, chunks)
        times["index"] = time.perf_counter() - start

        start = time.perf_counter()
        manifest = Manifest(
            embedder=facts,
            chunking=config.chunking.model_dump(),
            index={"type": config.index.type, **index.describe(), "metric": "inner_product"},
            counts={
                "documents": len(corpus.documents) + kept_documents,
                "chunks": len(chunks),
                "encoded_chunks": len(encoded),
                "skipped": len(corpus.skipped),
                "unsupported_files": corpus.unsupported,
                "links_not_followed": corpus.links_not_followed,
            },
            readers=reader_manifest(corpus.readers),
            corpus={
                # printable even when the path is not valid UTF-8 (undecodable bytes as \xNN)
                "path": os.fsencode(Path(corpus_path).resolve()).decode("utf-8", "backslashreplace"),
                "sha256": corpus_hash(corpus.documents),
            },
            versions=_library_versions(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            build_seconds={k: round(v, 3) for k, v in times.items()},
        )
        version = _write_version(index_path, index, chunks, vectors, manifest)
        try:
            publish_version(index_path, version)
        except OSError as exc:
            raise _write_error(index_path, exc) from exc
        removed += _remove_old_versions(index_path, keep=version)
        times["write"] = time.perf_counter() - start
        logger.info("index published at %s (%s)", version, ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
        return BuildReport(index_path, version, manifest, corpus.skipped, changes, removed, corpus.unsupported_files,
                           kept)
    finally:
        lock.release()


def _lock(index_path: Path) -> FileLock:
    """Create the index folder if needed and take its build lock; clear errors for a file, read-only or busy folder."""
    if index_path.exists() and not index_path.is_dir():
        raise InputError(f"--index {index_path} is a file, not an index folder; point --index at a folder")
    try:
        index_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(index_path, exc) from exc
    if not os.access(index_path, os.W_OK | os.X_OK):
        raise _write_error(index_path, PermissionError(13, "Permission denied"))
    lock = FileLock(str(index_path / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise IndexLockedError(
            f"another build is running on {index_path} (lock {index_path / LOCK}); wait for it to finish"
        ) from None
    except OSError as exc:
        raise _write_error(index_path, exc) from exc
    return lock


def _write_error(index_path: Path, exc: BaseException) -> IndexWriteError:
    """One message for an index folder that cannot be written: what failed, and that the old index is live."""
    if isinstance(exc, RagError):
        return exc if isinstance(exc, IndexWriteError) else IndexWriteError(str(exc))
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return IndexWriteError(
        f"cannot write the index at {index_path} ({why}); free disk space or make the folder writable, "
        "or use --index elsewhere. The previous index, if any, is still live"
    )


def _chunk(documents: list[Document], config: PipelineConfig, embedder, show_progress: bool) -> list[Chunk]:
    chunking = config.chunking
    return list(
        tqdm(
            chunk_documents(
                documents, embedder.tokenizer, chunking.size, chunking.overlap,
                max_length=embedder.max_length, enabled=chunking.enabled,
            ),
            desc="chunking", unit="chunk", disable=not show_progress,
        )
    )


def _embed(
    chunks: list[Chunk], dimension: int, previous: _Previous | None, encode: Callable[[list[str]], np.ndarray]
) -> tuple[np.ndarray, list[int]]:
    """Vectors for every chunk, in chunk order; returns them and the positions that were encoded."""
    vectors = np.empty((len(chunks), dimension), dtype=np.float32)
    todo: list[int] = []
    for i, chunk in enumerate(chunks):
        row = previous.rows.get(chunk.text) if previous is not None else None
        if row is None:
            todo.append(i)
        else:
            vectors[i] = previous.embeddings[row]
    if todo:
        logger.info("encoding %d of %d chunks (%d reused)", len(todo), len(chunks), len(chunks) - len(todo))
        vectors[todo] = encode([chunks[i].text for i in todo])
    return vectors, todo


def _load_previous(index_path: Path, facts: dict, strict: bool) -> _Previous | None:
    """The live version's vectors when they were made by the same embedder; None (or an error if strict) otherwise."""
    try:
        version = current_version(index_path)
        old = Manifest.read(version)
    except IndexMissingError:
        if strict:
            raise IndexMissingError(
                f"--update needs an existing index at {index_path}; run without --update for a first build"
            ) from None
        return None
    if old.embedder != facts:
        if strict:
            changed = sorted(k for k in facts if old.embedder.get(k) != facts[k])
            raise IndexMismatchError(
                f"--update: the index at {index_path} was built with other embedder settings ({', '.join(changed)}); "
                "run without --update to rebuild it in full"
            )
        logger.info("embedder settings changed since the last build: encoding everything")
        return None
    try:
        if not (version / EMBEDDINGS).is_file():  # never open a FIFO or device in its place
            raise OSError(f"{EMBEDDINGS} is missing or not a regular file")
        embeddings = np.load(version / EMBEDDINGS, mmap_mode="r")
        store = ChunkStore(version / CHUNKS)
        doc_texts = store.doc_texts()
        store.close()
    except (OSError, ValueError, IndexMissingError) as exc:
        if strict:
            raise IndexMissingError(
                f"--update: cannot read the vectors of {version} ({exc}); rebuild without --update"
            ) from None
        logger.warning("cannot reuse vectors of %s (%s): encoding everything", version, exc)
        return None
    if embeddings.shape != (len(doc_texts), facts["dimension"]):
        if strict:
            raise IndexMissingError(f"--update: {version} is inconsistent; rebuild without --update")
        return None
    rows = {text: i for i, (_, text) in enumerate(doc_texts)}
    by_doc: dict[str, list[str]] = {}
    for doc_id, text in doc_texts:
        by_doc.setdefault(doc_id, []).append(text)
    return _Previous(rows=rows, embeddings=embeddings, doc_texts=by_doc, version=version)


def _keep_failed(chunks: list[Chunk], skipped: list[tuple[str, str]], previous: _Previous) -> tuple[list[str], int]:
    """Append the live version's chunks of files that failed to read this time; their vectors are reused.

    Returns the files kept and how many documents they hold. A kept document whose id a file read
    this time also has (it moved) is left out, so ids stay unique.
    """
    failed = {where for where, _why in skipped}
    if not failed or previous.version is None:
        return [], 0
    store = ChunkStore(previous.version / CHUNKS)
    try:
        old = store.chunks_from_files(failed)
    finally:
        store.close()
    present = {chunk.doc_id for chunk in chunks}
    old = [chunk for chunk in old if chunk.doc_id not in present]
    chunks.extend(old)
    files = sorted({chunk.source.rsplit(":", 1)[0] if chunk.source not in failed else chunk.source for chunk in old})
    for name in files:
        logger.warning("kept the indexed version of %s: it failed to read this time", name)
    return files, len({chunk.doc_id for chunk in old})


def _changes(chunks: list[Chunk], previous: _Previous | None, encoded: list[int]) -> dict[str, int]:
    """Documents added / changed / removed / unchanged against the previous version, and chunk counts."""
    new_docs: dict[str, list[str]] = {}
    for chunk in chunks:
        new_docs.setdefault(chunk.doc_id, []).append(chunk.text)
    old_docs = previous.doc_texts if previous is not None else {}
    common = new_docs.keys() & old_docs.keys()
    changed = sum(1 for d in common if new_docs[d] != old_docs[d])
    return {
        "added": len(new_docs.keys() - old_docs.keys()),
        "changed": changed,
        "removed": len(old_docs.keys() - new_docs.keys()),
        "unchanged": len(common) - changed,
        "encoded_chunks": len(encoded),
        "reused_chunks": len(chunks) - len(encoded),
    }


def _write_version(index_path: Path, index, chunks: list[Chunk], vectors: np.ndarray, manifest: Manifest) -> Path:
    """Write a complete version folder under a temporary name, then rename it into place."""
    version = index_path / f"v-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"
    staging = version.with_name(version.name + ".tmp")
    try:
        staging.mkdir()
        mark_version(staging)
        index.save(staging)
        np.save(staging / EMBEDDINGS, vectors)
        store = ChunkStore(staging / CHUNKS, create=True)
        try:
            store.add(chunks)
        finally:
            store.close()
        manifest.write(staging)
        staging.rename(version)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, (OSError, sqlite3.Error)):  # disk full, file too large, read-only folder
            raise _write_error(index_path, exc) from exc
        raise
    return version


def reader_manifest(documents_per_reader) -> dict[str, dict]:
    """Which readers (and library versions) read this corpus, and how many documents each."""
    from indexer.readers import MODULES

    out = {}
    for module in MODULES:
        count = documents_per_reader.get(module.NAME, 0)
        if count:
            library = package_versions((module.LIBRARY,), runtime=False).get(module.LIBRARY) if module.LIBRARY else None
            out[module.NAME] = {"version": module.VERSION, "library": module.LIBRARY, "library_version": library,
                                "documents": count}
    return out


def corpus_hash(documents: list[Document]) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        # metadata and section boundaries only when there are any, so a plain corpus hashes as before
        structure = json.dumps([doc.metadata, [(s.page, s.headings) for s in doc.sections]], ensure_ascii=False,
                               sort_keys=True) if (doc.metadata or doc.sections) else ""
        for part in (doc.doc_id, doc.full_text, structure) if structure else (doc.doc_id, doc.full_text):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    return package_versions((
        "faiss-cpu", "faiss-gpu-cu12", "torch", "sentence-transformers", "transformers", "numpy",
        "pymilvus", "milvus-lite", "ray",
    ))


def _remove_unfinished(index_path: Path) -> list[str]:
    """Delete staging folders left by a build that was killed (we hold the lock); only folders a build made."""
    removed = []
    for item in sorted(index_path.glob("v-*.tmp")):
        # A staging folder is marked right after it is made (an empty one was killed in between).
        if is_own_version(item):
            logger.warning("removing unfinished build %s", item)
            discard_version(item)
            removed.append(item.name)
        else:
            logger.info("leaving %s alone: not made by a build", item)
    for item in index_path.glob(".ray-*"):  # Parquet of a killed --engine ray build
        shutil.rmtree(item, ignore_errors=True)
    return removed


def _remove_old_versions(index_path: Path, keep: Path) -> list[str]:
    """Delete old version folders beyond ``KEEP_PREVIOUS``; never one a build did not make (its marker)."""
    candidates = sorted(p for p in index_path.glob("v-*") if p.name != keep.name and not p.name.endswith(".tmp"))
    old = []
    for path in candidates:
        if is_own_version(path):
            old.append(path)
        elif path.is_dir():
            logger.info("leaving %s alone: it carries no %s marker, so no build made it", path, VERSION_MARKER)
    removed = []
    for item in old[: max(len(old) - KEEP_PREVIOUS, 0)]:
        logger.warning("removing old index version %s", item)
        discard_version(item)
        removed.append(item.name)
    return removed


