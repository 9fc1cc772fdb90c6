"""Milvus vector store stage (``index.type: milvus``): the same contract as the ``faiss`` stage.

Vectors go into a Milvus collection (``id`` = the chunk's row id, ``doc_id`` as
metadata, ``vector`` searched by inner product, which is cosine on the
normalized vectors the embedder makes). Everything else of an index version
(manifest, chunk store, ``embeddings.npy``) stays in the version folder, so
builds, updates, deletes, embedding reuse and manifest checks are the FAISS
path's, unchanged.

Where the collection lives is ``index.uri``:

* ``null`` (default): Milvus Lite in-process, in ``<version>/milvus.db``. Each
  version has its own database, so a reader of the live version and a build of
  the next one never contend for Milvus Lite's one-process lock.
* a local path ending in ``.db`` (a folder): one Milvus Lite database shared by
  every version, a collection per version. Milvus Lite admits one process at a
  time: a second one gets :class:`~pipeline.errors.IndexLockedError`.
* ``http://host:19530`` (or ``https://``, ``tcp://``): a Milvus standalone or
  cluster; one collection per version, the old one dropped after the swap.

Each version folder records its collection in ``milvus.json``, written before
the collection is created, so the next build can drop what a killed build left.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from tqdm.auto import tqdm

from pipeline.errors import (
    IndexLockedError,
    IndexMissingError,
    MissingDependencyError,
    ServiceUnavailableError,
)
from pipeline.params import StageParams
from pipeline.types import Chunk

logger = logging.getLogger(__name__)

MILVUS_FILE = "milvus.json"  # in a version folder: which collection, where
LITE_DIR = "milvus.db"  # Milvus Lite database inside a version folder (uri: null)
TOKEN_ENV = "MILVUS_TOKEN"  # "user:password" or an API key for a secured server; never in the YAML
DEFAULT_EF_SEARCH = 64
SLOW_CALLS = 10
SERVER_SCHEMES = ("http://", "https://", "tcp://")

BUILD_KNOBS = {"FLAT": (), "HNSW": ("m", "ef_construction"), "IVF_FLAT": ("nlist",)}
SEARCH_KNOBS = {"FLAT": (), "HNSW": ("ef_search",), "IVF_FLAT": ("nprobe",)}


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise MissingDependencyError("pymilvus", "scale", "index.type: milvus") from None
    return pymilvus


def is_server_uri(uri: str | None) -> bool:
    return uri is not None and uri.lower().startswith(SERVER_SCHEMES)


class MilvusIndex:
    """A Milvus collection of float32 (n, dim) vectors, searched by inner product."""

    class Params(StageParams):
        path_keys = ("path", "uri")  # a server URL in ``uri`` is left as it is
        path: str = "indexes/default"
        uri: str | None = None
        collection: str = Field("rerank_rag", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,180}$")
        index_type: Literal["FLAT", "HNSW", "IVF_FLAT"] = "FLAT"
        m: PositiveInt | None = None
        ef_construction: PositiveInt | None = None
        nlist: PositiveInt | None = None
        ef_search: PositiveInt | None = None
        nprobe: PositiveInt | None = None
        batch_size: PositiveInt = 1000
        timeout: PositiveFloat = 30.0  # seconds per call; inserts and index builds get SLOW_CALLS times more

        @field_validator("uri")
        @classmethod
        def _check_uri(cls, uri: str | None) -> str | None:
            if uri is None or is_server_uri(uri) or uri.endswith(".db"):
                return uri
            raise ValueError(
                "expected null (Milvus Lite in the index folder), a local Milvus Lite path ending in '.db', "
                "or a server address such as http://localhost:19530"
            )

        @model_validator(mode="after")
        def _check_knobs(self) -> MilvusIndex.Params:
            allowed = BUILD_KNOBS[self.index_type] + SEARCH_KNOBS[self.index_type]
            for knob in ("m", "ef_construction", "nlist", "ef_search", "nprobe"):
                if getattr(self, knob) is not None and knob not in allowed:
                    raise ValueError(f"{knob} does not apply to index_type {self.index_type}; remove it")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params
        self._vectors: np.ndarray | None = None
        self._doc_ids: list[str] | None = None
        self._client = None
        self._collection: str | None = None
        self._uri: str | None = None
        self._ntotal = 0

    @property
    def ntotal(self) -> int:
        return self._ntotal

    @staticmethod
    def release_version(version: Path) -> None:
        """Drop the collection ``version`` records when it lives outside the folder (see the module docstring)."""
        drop_version_collection(version)

    def describe(self) -> dict[str, Any]:
        """What the vectors' index depends on (for the manifest and the evaluation cache key)."""
        return {"index_type": self.params.index_type, "params": self._build_params(), "uri": self.params.uri}

    def build(self, vectors: np.ndarray, chunks: Sequence[Chunk] | None = None) -> None:
        """Take the vectors (row i gets id i) and the chunks' document ids; :meth:`save` inserts them."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-d (n, dim), got shape {vectors.shape}")
        if chunks is not None and len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks for {len(vectors)} vectors")
        self._vectors = vectors
        self._doc_ids = [c.doc_id for c in chunks] if chunks is not None else [""] * len(vectors)
        self._ntotal = len(vectors)

    def save(self, directory: Path) -> None:
        """Create this version's collection, insert in batches, build the index, and let go of the database."""
        if self._vectors is None:
            raise RuntimeError("save() before build()")
        pymilvus = _import_pymilvus()
        directory = Path(directory)
        collection = collection_name(self.params.collection, directory)
        record = {"collection": collection, "uri": self.params.uri}
        (directory / MILVUS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        uri = _resolve_uri(self.params.uri, directory)
        client, started = _connect(uri, self.params.timeout)
        try:
            self._insert(client, pymilvus, collection, server=is_server_uri(uri))
        except pymilvus.MilvusException as exc:
            raise ServiceUnavailableError(
                f"writing Milvus collection {collection} at {uri} failed: {exc.message or type(exc).__name__} "
                "(the previous index stays live)"
            ) from None
        finally:
            _disconnect(client, uri, started)

    def _insert(self, client, pymilvus, collection: str, server: bool) -> None:
        vectors, doc_ids = self._vectors, self._doc_ids
        slow = self.params.timeout * SLOW_CALLS
        if client.has_collection(collection):
            client.drop_collection(collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("doc_id", pymilvus.DataType.VARCHAR, max_length=65535)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        client.create_collection(collection, schema=schema, timeout=self.params.timeout)
        step = self.params.batch_size
        with tqdm(total=len(vectors), desc="milvus insert", unit="vec", disable=None) as bar:
            for start in range(0, len(vectors), step):
                stop = min(start + step, len(vectors))
                rows = [
                    {"id": i, "doc_id": doc_ids[i], "vector": vectors[i]} for i in range(start, stop)
                ]
                client.insert(collection, rows, timeout=slow)
                bar.update(stop - start)
        if not server:  # Milvus Lite counts (get_collection_stats) and indexes only flushed rows
            client.flush(collection, timeout=slow)
        build = self._build_params()
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=self.params.index_type, metric_type="IP", params=build)
        # pymilvus 3 sends build parameters as flat keys (read by Milvus servers); Milvus Lite 3.2 reads
        # only the nested "params" key, which servers accept too, so send both.
        index_params[0].get_index_configs()["params"] = build
        # A server builds the index asynchronously: wait for it. Milvus Lite builds it in load() and
        # answers pymilvus' wait with an unimplemented call (logged as a traceback), so it is not asked.
        client.create_index(collection, index_params, sync=server, timeout=slow)
        client.load_collection(collection, timeout=slow)  # builds and persists the index now
        count = _row_count(client, collection, server, slow)
        if count != len(vectors):
            raise IndexMissingError(f"Milvus collection {collection} holds {count} rows after inserting {len(vectors)}")
        logger.info("milvus collection %s: %d vectors, %s index", collection, count, self.params.index_type)

    def load(self, directory: Path) -> None:
        """Open the collection of the version in ``directory`` and load it for search."""
        _import_pymilvus()
        directory = Path(directory)
        try:
            record = json.loads((directory / MILVUS_FILE).read_text(encoding="utf-8"))
            collection = record["collection"]
        except FileNotFoundError:
            raise IndexMissingError(
                f"{directory / MILVUS_FILE} is missing: this version was not built with index.type: milvus; "
                "rebuild with scripts/build_index.py"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexMissingError(f"{directory / MILVUS_FILE} is unreadable ({exc}); rebuild the index") from None
        uri = _resolve_uri(self.params.uri if self.params.uri is not None else record.get("uri"), directory)
        client, _ = _connect(uri, self.params.timeout)
        with _calls_to(uri, f"opening collection {collection}"):
            if not client.has_collection(collection):
                raise IndexMissingError(
                    f"Milvus collection {collection} is missing at {uri}; rebuild with scripts/build_index.py"
                )
            client.load_collection(collection, timeout=self.params.timeout * SLOW_CALLS)
            self._ntotal = _row_count(client, collection, is_server_uri(uri), self.params.timeout)
        self._client, self._collection, self._uri = client, collection, uri

    def search(
        self, queries: np.ndarray, top_k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n_queries, k) with k = min(top_k, ntotal); ids are row numbers (-1 pads).

        ``rows`` (a filter's matching row ids) becomes a Milvus filter expression on ``id``
        (``id in [...]``, or ``not in`` the complement when that is shorter), so Milvus searches only
        those rows and k is min(top_k, len(rows)).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(top_k, self.ntotal if rows is None else len(rows))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k == 0 or len(queries) == 0:
            return scores, ids
        expression = "" if rows is None else self._filter_expression(rows)
        with _calls_to(self._uri, f"searching collection {self._collection}"):
            results = self._client.search(
                self._collection, data=list(queries), limit=k, output_fields=[], filter=expression,
                search_params={"metric_type": "IP", "params": self._search_params(k)}, timeout=self.params.timeout,
            )
        for row, hits in enumerate(results):
            for col, hit in enumerate(hits):
                ids[row, col] = hit["id"]
                scores[row, col] = hit["distance"]
        return scores, ids

    def _filter_expression(self, rows: np.ndarray) -> str:
        """``id in [...]`` over the rows, or ``id not in [...]`` over the others when fewer."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) >= self.ntotal:
            return ""
        if 2 * len(rows) <= self.ntotal:
            return f"id in [{','.join(map(str, rows.tolist()))}]"
        others = np.setdiff1d(np.arange(self.ntotal, dtype=np.int64), rows, assume_unique=True)
        return f"id not in [{','.join(map(str, others.tolist()))}]"

    def _build_params(self) -> dict[str, int]:
        p = self.params
        if p.index_type == "HNSW":
            return {"M": p.m or 16, "efConstruction": p.ef_construction or 200}
        if p.index_type == "IVF_FLAT":
            return {"nlist": p.nlist or 1024}
        return {}

    def _search_params(self, k: int) -> dict[str, int]:
        p = self.params
        if p.index_type == "HNSW":  # Milvus requires ef >= limit
            return {"ef": max(p.ef_search or DEFAULT_EF_SEARCH, k)}
        if p.index_type == "IVF_FLAT":
            return {"nprobe": p.nprobe or 1}
        return {}


def _row_count(client, collection: str, server: bool, timeout: float) -> int:
    """The rows of a loaded collection. A server is asked with ``count(*)`` at strong consistency, which
    counts rows not flushed yet (its ``get_collection_stats`` counts flushed rows only; a build does not
    flush: a flush costs ~3 s, is rate-limited, and the server seals and indexes segments by itself)."""
    if not server:
        return int(client.get_collection_stats(collection)["row_count"])
    rows = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong",
                        timeout=timeout)
    return int(rows[0]["count(*)"])


def collection_name(prefix: str, version_dir: Path) -> str:
    """``<prefix>_<version>``, with the staging suffix dropped and other characters made underscores."""
    name = Path(version_dir).name.removesuffix(".tmp")
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def drop_version_collection(version_dir: Path, timeout: float = 30.0) -> None:
    """Drop the collection a version folder records, when it lives outside the folder.

    Called (under the build lock) before an old or unfinished version folder is
    deleted. A version without ``milvus.json`` (FAISS) or with its database in
    the folder itself needs nothing.
    """
    path = Path(version_dir) / MILVUS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    uri, collection = record.get("uri"), record.get("collection")
    if uri is None or not collection:
        return
    try:
        _import_pymilvus()
        client, started = _connect(_resolve_uri(uri, version_dir), timeout)
    except (MissingDependencyError, ServiceUnavailableError, IndexLockedError) as exc:
        logger.warning("cannot drop Milvus collection %s of %s (%s); drop it by hand", collection, version_dir, exc)
        return
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
            logger.info("dropped Milvus collection %s", collection)
    finally:
        _disconnect(client, uri, started)


@contextmanager
def _calls_to(uri: str | None, doing: str) -> Iterator[None]:
    """Turn a failed call to Milvus into one clear :class:`ServiceUnavailableError` (a server that went away,
    a timeout) instead of pymilvus' exception; our own errors pass through."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        where = f"the Milvus server at {uri} (index.uri)" if is_server_uri(uri) else f"the Milvus Lite database {uri}"
        raise ServiceUnavailableError(
            f"{doing} failed at {where}: {exc.message or type(exc).__name__}; check that it is running and reachable"
        ) from None


def _resolve_uri(uri: str | None, version_dir: Path) -> str:
    if uri is None:
        return str(Path(version_dir) / LITE_DIR)
    return uri


def _connect(uri: str, timeout: float):
    """A ``MilvusClient`` for ``uri``; returns it and whether this call started a Milvus Lite database."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    started, options = False, {}
    if not is_server_uri(uri):
        started = _check_lite_lock(uri)
        # pymilvus pings every 10 s; Milvus Lite's in-process gRPC server keeps gRPC's default policy
        # (at most one ping per 5 min without data) and drops the channel ("too many pings") during a
        # long index build. In-process there is nothing to keep alive.
        options = {"grpc_options": {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}}
    try:
        client = MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout, **options)
    except MilvusException as exc:
        if is_server_uri(uri):
            raise ServiceUnavailableError(
                f"cannot reach the Milvus server at {uri} (index.uri): {exc.message or type(exc).__name__}; "
                "check the address and that the server is running"
            ) from None
        raise ServiceUnavailableError(
            f"cannot open the Milvus Lite database {uri}: {exc.message or type(exc).__name__}"
        ) from None
    return client, started


def _check_lite_lock(path: str) -> bool:
    """Fail with a clear message when another process holds the Milvus Lite folder.

    Milvus Lite takes an exclusive ``flock`` on ``<folder>/LOCK`` and, when it
    cannot, logs a traceback and returns a bare error; checking first gives one
    line instead. Returns True when this process will start the database (False
    when it already runs it).
    """
    from milvus_lite.server_manager import server_manager_instance

    folder = os.path.abspath(path)
    if folder in server_manager_instance._servers:  # already open in this process: no lock to take
        return False
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        raise IndexMissingError(f"index.uri: the folder {parent} for the Milvus Lite database does not exist")
    lock = os.path.join(folder, "LOCK")
    if os.path.exists(lock):
        import fcntl

        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise IndexLockedError(
                f"the Milvus Lite database {folder} is open in another process (Milvus Lite allows one at a time); "
                "wait for it to finish, or use index.uri: null (a database per index version) or a Milvus server"
            ) from None
        finally:
            os.close(fd)
    return True


def _disconnect(client, uri: str, started: bool) -> None:
    """Close the client and, when this process started the Milvus Lite database, stop it (frees its lock)."""
    client.close()
    if started and not is_server_uri(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)
