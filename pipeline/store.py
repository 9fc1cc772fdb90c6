"""On-disk layout of an index, and loading it back.

An index path is a folder holding immutable versions and a pointer::

    indexes/offline/
        CURRENT            name of the live version, replaced atomically
        .lock              held by a build
        v-20261125T101500-1a2b3c/
            index.faiss    FAISS index, row i = chunk id i
            chunks.sqlite  chunk store (text, document id, source, position, page, headings, metadata)
            embeddings.npy the chunk vectors, so a rebuild encodes only new or changed text
            manifest.json  how it was built
            .rag-version   marker: this folder was made by a build (only marked folders are ever deleted)

A build writes a new version folder, then swaps ``CURRENT`` with
``os.replace``; readers resolve ``CURRENT`` once and read one version, so they
see the old index or the new one, never a mix, and a build killed at any point
leaves the previous version live.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote_from_bytes

import numpy as np

from pipeline import registry
from pipeline.errors import IndexMissingError, InputError
from pipeline.filters import Filter, no_match
from pipeline.types import Chunk

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CHUNKS = "chunks.sqlite"
EMBEDDINGS = "embeddings.npy"  # float32 (n_chunks, dim), row i = chunk i; reused by later builds
# 2: the chunk store has page, headings and metadata columns (an index of version 1 still loads: no
# pages, headings or metadata, so only source/doc_id filters match), and the manifest lists the readers.
FORMAT_VERSION = 2
VERSION_MARKER = ".rag-version"  # written first into every version folder a build creates
# Version folders made before the marker existed: v-<UTC timestamp>-<6 hex>, recognised with their manifest.json.
VERSION_NAME = re.compile(r"v-\d{8}T\d{6,12}-[0-9a-f]{6}")
# Everything a build writes into a version folder (the index backends' files included).
BUILD_FILES = frozenset({
    "index.faiss", CHUNKS, f"{CHUNKS}-journal", EMBEDDINGS, MANIFEST, VERSION_MARKER, "milvus.json", "milvus.db",
})
MAX_POINTER_BYTES = 4096
MAX_MANIFEST_BYTES = 16 * 2**20

_MANIFEST_TYPES: dict[str, type] = {
    "embedder": dict, "chunking": dict, "index": dict, "counts": dict, "corpus": dict, "versions": dict,
    "created_at": str, "build_seconds": dict, "format_version": int, "readers": dict,
}


class NotRegularFileError(OSError):
    """A path that is a FIFO, socket, device or folder where a regular file was expected."""


def open_regular(path: Path, *, follow_links: bool = True) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file; never blocks on a FIFO or device.

    Raises:
        NotRegularFileError: it is something else (the message names what).
        OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """A word for what a stat mode describes: ``FIFO``, ``socket``, ``device``, ``folder``, ``file``."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return word
    return "a regular file"


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; larger is a ``ValueError``."""
    with open_regular(path) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data


def is_own_version(folder: Path) -> bool:
    """True for a version folder a build made: it carries the marker (or, from before the marker, the
    ``v-<timestamp>-<hex>`` name and a manifest). Nothing else in an index folder is ever deleted."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / VERSION_MARKER).is_file():
        return True
    if not VERSION_NAME.fullmatch(folder.name.removesuffix(".tmp")):
        return False
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except OSError:
        return False
    # Unmarked: only a folder holding nothing but what a build writes (a finished one has its manifest).
    return names <= BUILD_FILES and (MANIFEST in names or folder.name.endswith(".tmp"))


def mark_version(folder: Path) -> None:
    """Write the marker that makes ``folder`` a version this project may delete later."""
    (folder / VERSION_MARKER).write_text('{"created_by": "rerank-rag"}\n', encoding="utf-8")


def damaged(index_path: Path, why: str) -> IndexMissingError:
    """The one message for an index folder whose pointer or version cannot be trusted."""
    return IndexMissingError(f"the index at {index_path} is damaged ({why}); rebuild it with scripts/build_index.py")


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
    readers: dict[str, Any] = field(default_factory=dict)  # reader name -> version, library, documents read

    def write(self, directory: Path) -> None:
        _write_json(directory / MANIFEST, asdict(self))

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            data = json.loads(read_bounded(path, MAX_MANIFEST_BYTES).decode("utf-8"))
            _check_manifest_types(data)
            return cls(**data)
        except FileNotFoundError:
            raise IndexMissingError(f"manifest {path} is missing; rebuild with scripts/build_index.py") from None
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            raise IndexMissingError(
                f"manifest {path} is unreadable ({exc}); rebuild with scripts/build_index.py"
            ) from None


def _check_manifest_types(data: Any) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    for key, value in data.items():
        expected = _MANIFEST_TYPES.get(key)
        if expected is None:
            raise TypeError(f"unknown key {key!r}")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(f"{key!r} must be a JSON {'object' if expected is dict else expected.__name__}, "
                            f"got {type(value).__name__}")
    for key, value in data.get("counts", {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"counts.{key} must be an integer, got {type(value).__name__}")


class ChunkStore:
    """SQLite table of chunks keyed by their FAISS row id.

    ``page`` (NULL when the format has none), ``headings`` (a JSON list) and ``metadata``
    (a JSON object, the document's) came with format version 2; a store written before
    reads as having none of them.
    """

    _COLUMNS = "id, chunk_id, doc_id, text, source, position, start, end_, title, page, headings, metadata"
    _FILTER_CACHE = 64  # filters whose matching rows are kept

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not path.is_file():
            raise IndexMissingError(f"chunk store {path} is missing; rebuild with scripts/build_index.py")
        # Escaped: '#', '?' or '%' in the path must not end the file name part of the URI.
        uri = f"file:{quote_from_bytes(os.fsencode(path.absolute()))}?mode={'rwc' if create else 'ro'}"
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            if create:
                raise
            raise IndexMissingError(f"chunk store {path} cannot be opened ({exc}); rebuild the index") from None
        self._lock = threading.Lock()
        self._groups: tuple[np.ndarray, list[tuple[str, str, int | None, dict]]] | None = None
        self._matches: OrderedDict[Filter, np.ndarray] = OrderedDict()
        if create:
            self._conn.execute(
                "CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, "
                "text TEXT NOT NULL, source TEXT NOT NULL, position INTEGER NOT NULL, start INTEGER NOT NULL, "
                "end_ INTEGER NOT NULL, title TEXT NOT NULL, page INTEGER, headings TEXT NOT NULL DEFAULT '[]', "
                "metadata TEXT NOT NULL DEFAULT '{}')"
            )
            self._select = self._COLUMNS
        else:
            self._select = self._readable_columns()

    def _readable_columns(self) -> str:
        """The SELECT list for this store: a format-1 store has no page/headings/metadata (read as none)."""
        try:
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(chunks)")}
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None
        defaults = {"page": "NULL", "headings": "'[]'", "metadata": "'{}'"}
        return ", ".join(
            name if name in have or name not in defaults else f"{defaults[name]} AS {name}"
            for name in self._COLUMNS.split(", ")
        )

    def add(self, chunks: Iterable[Chunk], first_id: int = 0) -> None:
        rows = (
            (i, c.chunk_id, c.doc_id, c.text, c.source, c.position, c.start, c.end, c.title, c.page,
             json.dumps(list(c.headings), ensure_ascii=False), json.dumps(c.metadata, ensure_ascii=False))
            for i, c in enumerate(chunks, start=first_id)
        )
        with self._conn:
            self._conn.executemany(f"INSERT INTO chunks ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def get(self, ids: Sequence[int]) -> dict[int, Chunk]:
        """Chunks by row id; missing ids are absent from the result."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        try:
            cursor = self._conn.execute(f"SELECT {self._select} FROM chunks WHERE id IN ({marks})", list(map(int, ids)))
            return {
                row[0]: Chunk(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                              tuple(_json(row[10], list)), _json(row[11], dict))
                for row in cursor
            }
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def chunks_from_files(self, files: Iterable[str]) -> list[Chunk]:
        """The chunks read from these files (source ``name``, or ``name:line`` for a JSONL file), in row order."""
        files = set(files)
        try:
            cursor = self._conn.execute(f"SELECT {self._select} FROM chunks ORDER BY id")
            return [
                Chunk(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                      tuple(_json(row[10], list)), _json(row[11], dict))
                for row in cursor
                if row[4] in files or row[4].rpartition(":")[0] in files
            ]
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def matching_rows(self, flt: Filter) -> np.ndarray:
        """The sorted row ids (int64) of the chunks ``flt`` lets through; cached per filter.

        Raises:
            NoMatchError: no chunk matches (the message lists the metadata keys the index has).
        """
        with self._lock:
            cached = self._matches.get(flt)
            if cached is not None:
                self._matches.move_to_end(flt)
                return cached
            group_of_row, groups = self._load_groups()
            keep = np.fromiter((flt.matches(src, meta, doc, page) for doc, src, page, meta in groups),
                               dtype=bool, count=len(groups))
            rows = np.flatnonzero(keep[group_of_row]).astype(np.int64) if len(groups) else np.zeros(0, np.int64)
            if len(rows) == 0:
                raise no_match(flt, len(group_of_row), {key for *_, meta in groups for key in meta})
            self._matches[flt] = rows
            if len(self._matches) > self._FILTER_CACHE:
                self._matches.popitem(last=False)
            return rows

    def _load_groups(self):
        """Each row's group: chunks of one document on one page share their filterable facts."""
        if self._groups is None:
            index: dict[tuple, int] = {}
            groups: list[tuple[str, str, int | None, dict]] = []
            ids: list[int] = []
            columns = self._select.split(", ")
            select = ", ".join(columns[i] for i in (0, 2, 4, 9, 11))  # id, doc_id, source, page, metadata
            try:
                rows = self._conn.execute(f"SELECT {select} FROM chunks ORDER BY id")
                for _, doc_id, source, page, metadata in rows:
                    key = (doc_id, source, page, metadata)
                    if key not in index:
                        index[key] = len(groups)
                        groups.append((doc_id, source, page, _json(metadata, dict)))
                    ids.append(index[key])
            except sqlite3.DatabaseError as exc:
                raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None
            self._groups = (np.asarray(ids, dtype=np.int64), groups)
        return self._groups

    def texts(self) -> list[str]:
        """Every chunk's text, in row-id order (row i of the vector index is item i)."""
        return [text for _, text in self.doc_texts()]

    def doc_texts(self) -> list[tuple[str, str]]:
        """(document id, chunk text) of every chunk, in row-id order."""
        try:
            return list(self._conn.execute("SELECT doc_id, text FROM chunks ORDER BY id"))
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def document_counts(self) -> list[tuple[str, int, int]]:
        """(document id, its first row id, its number of chunks) of every document, in first-row order."""
        try:
            return [(doc_id, int(first), int(count)) for doc_id, first, count in self._conn.execute(
                "SELECT doc_id, MIN(id), COUNT(*) FROM chunks GROUP BY doc_id ORDER BY MIN(id)")]
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def count(self) -> int:
        try:
            return int(self._conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise IndexMissingError(f"chunk store {self.path} is unreadable ({exc}); rebuild the index") from None

    def close(self) -> None:
        self._conn.close()


def _json(text: str | None, kind: type):
    """A JSON column's value, or an empty ``kind`` when it is missing or not of that kind."""
    try:
        value = json.loads(text) if text else kind()
    except (ValueError, RecursionError):
        return kind()
    return value if isinstance(value, kind) else kind()


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
    if index_path.exists() and not index_path.is_dir():
        raise InputError(f"--index {index_path} is a file, not an index folder; point --index at a folder")
    if not index_path.is_dir():
        raise IndexMissingError(
            f"no index at {index_path}; build one with: python scripts/build_index.py CORPUS_DIR --index {index_path}"
        )
    pointer = index_path / CURRENT
    try:
        name = read_bounded(pointer, MAX_POINTER_BYTES).decode("utf-8").strip()
    except FileNotFoundError:
        raise IndexMissingError(
            f"{index_path} holds no finished index (no {CURRENT} file); build one with scripts/build_index.py"
        ) from None
    except UnicodeDecodeError:
        raise damaged(index_path, f"{CURRENT} is not UTF-8 text") from None
    except (OSError, ValueError) as exc:
        raise damaged(index_path, f"{CURRENT} is unreadable: {exc}") from None
    version = index_path / name
    if not name or "/" in name or "\0" in name or name in (".", "..") or not version.is_dir():
        raise damaged(index_path, f"{CURRENT} points at a missing version {name[:100]!r}")
    return version


def load_index(index_path: Path, vectors: Any) -> IndexBundle:
    """Load the live version of ``index_path`` into the ``vectors`` stage (unloaded FaissIndex)."""
    version = current_version(index_path)
    manifest = Manifest.read(version)
    if manifest.format_version > FORMAT_VERSION:
        raise IndexMissingError(
            f"index at {version} has format version {manifest.format_version}, newer than this code reads "
            f"({FORMAT_VERSION}); update the project, or rebuild the index with scripts/build_index.py"
        )
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
    for folder, _dirs, files in os.walk(version, topdown=False):  # a store may write subfolders (Milvus Lite)
        for name in files:
            _fsync_file(Path(folder) / name)
        _fsync_dir(Path(folder))
    tmp = index_path / f".{CURRENT}.tmp"
    if tmp.is_dir() and not tmp.is_symlink():
        _move_aside(tmp)
    tmp.unlink(missing_ok=True)
    tmp.write_text(version.name + "\n", encoding="utf-8")
    _fsync_file(tmp)
    pointer = index_path / CURRENT
    if pointer.is_dir() and not pointer.is_symlink():  # a damaged pointer; os.replace cannot overwrite a folder
        _move_aside(pointer)
    os.replace(tmp, pointer)
    _fsync_dir(index_path)


def _move_aside(path: Path) -> Path:
    """Rename a folder that blocks a file we must write, rather than delete what we did not make."""
    target = path.with_name(f"{path.name}.broken-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
    os.rename(path, target)
    logger.warning("%s was a folder, not a pointer file; moved it to %s", path, target)
    return target


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
