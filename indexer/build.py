"""Build an index from a corpus folder: read, chunk, encode, index, publish atomically."""

from __future__ import annotations

import hashlib
import logging
import platform
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from indexer.chunking import chunk_documents
from indexer.corpus import read_corpus
from indexer.store import CHUNKS, CURRENT, ChunkStore, Manifest, publish_version
from pipeline.config import PipelineConfig
from pipeline.errors import IndexLockedError
from pipeline.types import Document

logger = logging.getLogger(__name__)

LOCK = ".lock"
KEEP_PREVIOUS = 1  # old versions kept after a swap, for readers still loading them


@dataclass(frozen=True)
class BuildReport:
    """What a build produced: where, its manifest, and what was skipped."""

    path: Path
    version_dir: Path
    manifest: Manifest
    skipped: list[tuple[str, str]]


def embedding_manifest(config: PipelineConfig, embedder) -> dict:
    """The embedder facts an index depends on (compared at load time)."""
    params = config.embedder.params
    return {
        "type": config.embedder.type,
        "model": params.model,
        "dimension": embedder.dimension,
        "normalize": params.normalize,
        "max_length": embedder.max_length,
        "document_prompt": params.document_prompt,
    }


def build_index(
    corpus_path: str | Path,
    config: PipelineConfig,
    index_path: str | Path | None = None,
    *,
    show_progress: bool = False,
) -> BuildReport:
    """Index every document under ``corpus_path`` into ``index_path`` (default: ``index.path``).

    The new index is written to a fresh version folder and published with an
    atomic pointer swap; on any failure the previous index stays live.

    Raises:
        CorpusError: nothing readable in the corpus.
        IndexLockedError: another build of the same index is running.
        ModelNotFoundError: the embedder cannot be loaded.
    """
    from pipeline.pipeline import build_stage

    index_path = Path(index_path or config.index.params.path)
    index_path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(index_path / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise IndexLockedError(f"another build is running on {index_path} (lock {index_path / LOCK}); wait for it to finish") from None
    try:
        _remove_unfinished(index_path)
        times: dict[str, float] = {}
        start = time.perf_counter()
        corpus = read_corpus(corpus_path)
        times["read"] = time.perf_counter() - start

        start = time.perf_counter()
        embedder = build_stage(config.embedder)
        _ = embedder.model
        times["load_model"] = time.perf_counter() - start
        start = time.perf_counter()
        chunking = config.chunking
        chunks = list(
            tqdm(
                chunk_documents(
                    corpus.documents, embedder.tokenizer, chunking.size, chunking.overlap,
                    max_length=embedder.max_length, enabled=chunking.enabled,
                ),
                desc="chunking", unit="chunk", disable=not show_progress,
            )
        )
        times["chunk"] = time.perf_counter() - start
        logger.info("%d documents -> %d chunks", len(corpus.documents), len(chunks))

        start = time.perf_counter()
        vectors = embedder.encode_documents([c.text for c in chunks], show_progress=show_progress)
        times["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        index = build_stage(config.index)
        index.build(vectors)
        times["index"] = time.perf_counter() - start

        start = time.perf_counter()
        version = index_path / f"v-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"
        staging = version.with_name(version.name + ".tmp")
        staging.mkdir()
        try:
            index.save(staging)
            store = ChunkStore(staging / CHUNKS, create=True)
            store.add(chunks)
            store.close()
            manifest = Manifest(
                embedder=embedding_manifest(config, embedder),
                chunking=chunking.model_dump(),
                index={"type": config.index.type, "factory": config.index.params.factory, "metric": "inner_product"},
                counts={
                    "documents": len(corpus.documents),
                    "chunks": len(chunks),
                    "skipped": len(corpus.skipped),
                    "unsupported_files": corpus.unsupported,
                },
                corpus={"path": str(Path(corpus_path).resolve()), "sha256": corpus_hash(corpus.documents)},
                versions=_library_versions(),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                build_seconds={k: round(v, 3) for k, v in times.items()},
            )
            manifest.write(staging)
            staging.rename(version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_version(index_path, version)
        times["write"] = time.perf_counter() - start
        _remove_old_versions(index_path, keep=version)
        logger.info("index published at %s (%s)", version, ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
        return BuildReport(index_path, version, manifest, corpus.skipped)
    finally:
        lock.release()


def corpus_hash(documents: list[Document]) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        for part in (doc.doc_id, doc.full_text):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("faiss-cpu", "faiss-gpu-cu12", "torch", "sentence-transformers", "transformers", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _remove_unfinished(index_path: Path) -> None:
    """Delete staging folders left by a build that was killed (we hold the lock)."""
    for item in index_path.glob("v-*.tmp"):
        logger.info("removing unfinished build %s", item)
        shutil.rmtree(item, ignore_errors=True)


def _remove_old_versions(index_path: Path, keep: Path) -> None:
    live = (index_path / CURRENT).read_text(encoding="utf-8").strip()
    old = sorted(p for p in index_path.glob("v-*") if p.is_dir() and p.name not in (live, keep.name) and not p.name.endswith(".tmp"))
    for item in old[: max(len(old) - KEEP_PREVIOUS, 0)]:
        shutil.rmtree(item, ignore_errors=True)
