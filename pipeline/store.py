"""On-disk layout of an index, and loading it back.

An index path is a folder holding immutable versions and a pointer::

    indexes/offline/
        CURRENT            name of the live version, replaced atomically
        .lock              held by a build
        v-20261125T101500-1a2b3c/
            index.faiss    FAISS index, row i = chunk id i
            chunks.sqlite  chunk store (text, document id, source, position)
            embeddings.npy the chunk vectors, so a rebuild encodes only new or changed text
            manifest.json  how it was built

A build writes a new version folder, then swaps ``CURRENT`` with
``os.replace``; readers resolve ``CURRENT`` once and read one version, so they
see the old index or the new one, never a mix, and a build killed at any point
leaves the previous version live.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import registry
from pipeline.errors import IndexMissingError
from pipeline.types import Chunk

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CHUNKS = "chunks.sqlite"
EMBEDDINGS = "embeddings.npy"  # float32 (n_chunks, dim), row i = chunk i; reused by later builds
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """Facts about a built index, checked against the config when it is loaded."""

    embedder: dict[str, Any]
    chunking: dict[str, Any]
    index: dict[str, Any]
    counts: dict[str, int]
    corpus: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    build_seconds: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def write(self, directory: Path) -> None:
        _write_json(directory / MANIFEST, asdict(self))

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            raise IndexMissingError(f"manifest {path} is missing; rebuild with scripts/build_index.py") from None
        except (ValueError, TypeError) as exc:
            raise IndexMissingError(f"manifest {path} is unreadable ({exc}); rebuild with scripts/build_index.py") from None


class ChunkStore:
    """SQLite table of chunks keyed by their FAISS row id."""

    _COLUMNS = "id, chunk_id, doc_id, text, source, position, start, end_, title"

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not path.is_file():
            raise IndexMissingError(f"chunk store {path} is missing; rebuild with scripts/build_index.py")
        uri = f"file:{path}?mode={'rwc' if create else 'ro'}"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        if create:
            self._conn.execute(
                "CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, "
                "text TEXT NOT NULL, source TEXT NOT NULL, position INTEGER NOT NULL, start INTEGER NOT NULL, "
                "end_ INTEGER NOT NULL, title TEXT NOT NULL)"
            )

    def add(self, chunks: Iterable[Chunk], first_id: int = 0) -> None:
        rows = (
            (i, c.chunk_id, c.doc_id, c.text, c.source, c.position, c.start, c.end, c.title)
            for i, c in enumerate(chunks, start=first_id)
        )
        with self._conn:
            self._conn.executemany(f"INSERT INTO chunks ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def get(self, ids: Sequence[int]) -> dict[int, Chunk]:
        """Chunks by row id; missing ids are absent from the result."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        try:
            cursor = self._conn.execute(f"SELECT {self._COLUMNS} FROM chunks WHERE id IN ({marks})", list(map(int, ids)))
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None
        return {row[0]: Chunk(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]) for row in cursor}

    def texts(self) -> list[str]:
        """Every chunk's text, in row-id order (row i of the vector index is item i)."""
        return [text for _, text in self.doc_texts()]

    def doc_texts(self) -> list[tuple[str, str]]:
        """(document id, chunk text) of every chunk, in row-id order."""
        try:
            return list(self._conn.execute("SELECT doc_id, text FROM chunks ORDER BY id"))
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def count(self) -> int:
        try:
            return int(self._conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def close(self) -> None:
        self._conn.close()


@dataclass
class IndexBundle:
    """A loaded index version: vectors, chunks and the manifest that describes them."""

    path: Path
    version_dir: Path
    manifest: Manifest
    vectors: Any  # a registered index stage (FaissIndex)
    chunks: ChunkStore
    # Structures computed from this version at load time (e.g. a BM25 index), keyed by
    # the settings they depend on, so stages that share the bundle build them once.
    derived: dict[Any, Any] = field(default_factory=dict)


def current_version(index_path: Path) -> Path:
    """The live version folder of an index path."""
    index_path = Path(index_path)
    if not index_path.is_dir():
        raise IndexMissingError(
            f"no index at {index_path}; build one with: python scripts/build_index.py CORPUS_DIR --index {index_path}"
        )
    pointer = index_path / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IndexMissingError(
            f"{index_path} holds no finished index (no {CURRENT} file); build one with scripts/build_index.py"
        ) from None
    version = index_path / name
    if not name or "/" in name or not version.is_dir():
        raise IndexMissingError(f"{pointer} points at a missing version {name!r}; rebuild with scripts/build_index.py")
    return version


def load_index(index_path: Path, vectors: Any) -> IndexBundle:
    """Load the live version of ``index_path`` into the ``vectors`` stage (unloaded FaissIndex)."""
    version = current_version(index_path)
    manifest = Manifest.read(version)
    vectors.load(version)
    chunks = ChunkStore(version / CHUNKS)
    n_chunks = chunks.count()
    if n_chunks != vectors.ntotal or n_chunks != manifest.counts.get("chunks"):
        raise IndexMissingError(
            f"index at {version} is inconsistent: {vectors.ntotal} vectors, {n_chunks} stored chunks, "
            f"manifest says {manifest.counts.get('chunks')}; rebuild with scripts/build_index.py"
        )
    return IndexBundle(Path(index_path), version, manifest, vectors, chunks)


def discard_version(version: Path) -> None:
    """Delete a version folder, after every index backend has freed what it keeps outside it."""
    for backend in registry.classes("index"):
        backend.release_version(version)
    shutil.rmtree(version, ignore_errors=True)


def publish_version(index_path: Path, version: Path) -> None:
    """Make ``version`` the live one: fsync its files, then replace ``CURRENT`` atomically."""
    for folder, dirs, files in os.walk(version, topdown=False):  # a store may write subfolders (Milvus Lite)
        for name in files:
            _fsync_file(Path(folder) / name)
        _fsync_dir(Path(folder))
    tmp = index_path / f".{CURRENT}.tmp"
    tmp.write_text(version.name + "\n", encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, index_path / CURRENT)
    _fsync_dir(index_path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
