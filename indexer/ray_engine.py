"""Chunking and encoding as Ray Data pipelines (``build_index.py --engine ray``).

The build stays the one in :mod:`indexer.build` (reading, embedding reuse,
the store stage, the manifest, the atomic publish); only its two heavy steps
run on Ray:

1. documents -> ``map_batches`` over chunker actors -> chunk records as Parquet;
2. the chunks that need encoding (new or changed text) -> ``map_batches`` over
   a pool of model actors (one per GPU when the cluster has GPUs, else one per
   ``ray.cpus_per_actor`` CPUs) -> ``(row, vector)`` as Parquet.

The builder reads both back in row order and hands them to the store stage,
which loads them (FAISS) or batch-inserts them (Milvus). Each build writes its
Parquet to a fresh folder (``write_parquet`` adds files to an existing folder
rather than replacing it) and deletes it at the end.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ChunkingParams, RayParams, StageConfig
from pipeline.errors import ConfigError, MissingDependencyError, ServiceUnavailableError
from pipeline.types import Chunk, Document, Section

logger = logging.getLogger(__name__)

WORK_PREFIX = ".ray-"  # work folders under the index path; a killed build's are removed by the next one
START_ATTEMPTS = 2  # a busy machine can make a local Ray miss its start-up window once
MAX_TEMP_DIR = 50  # Ray adds ~55 characters of session and socket names below ray.temp_dir
CHUNK_COLUMNS = ("doc_index", "position", "chunk_id", "doc_id", "text", "source", "start", "end", "title", "page",
                 "headings")


def _sections_json(document: Document) -> str:
    """A document's sections as JSON text (Arrow carries strings; the chunker actor rebuilds them)."""
    return json.dumps([[s.text, s.page, list(s.headings)] for s in document.sections])


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError("ray", "scale", "build_index.py --engine ray") from None
    return ray


class _Chunker:
    """Ray actor: splits a batch of documents with the embedder's tokenizer (loaded once per actor, on the CPU)."""

    def __init__(self, embedder: StageConfig, chunking: ChunkingParams) -> None:
        from pipeline.pipeline import build_stage

        stage = StageConfig(embedder.kind, embedder.type, embedder.params.model_copy(update={"device": "cpu"}))
        self.embedder = build_stage(stage)
        self.chunking = chunking

    def __call__(self, batch):
        from indexer.chunking import chunk_documents

        columns = batch.to_pydict()
        docs = [
            Document(doc_id=d, text=t, title=ti, source=s,
                     sections=tuple(Section(text, page, tuple(headings)) for text, page, headings in json.loads(se)))
            for d, t, ti, s, se in zip(columns["doc_id"], columns["text"], columns["title"], columns["source"],
                                       columns["sections"])
        ]
        index_of = dict(zip(columns["doc_id"], columns["doc_index"]))
        out: dict[str, list] = {name: [] for name in CHUNK_COLUMNS}
        c = self.chunking
        for chunk in chunk_documents(docs, self.embedder.tokenizer, c.size, c.overlap,
                                     max_length=self.embedder.max_length, enabled=c.enabled):
            out["doc_index"].append(index_of[chunk.doc_id])
            for name in CHUNK_COLUMNS[1:]:
                value = getattr(chunk, name)
                out[name].append(list(value) if name == "headings" else value)  # Arrow takes a list, not a tuple
        import pyarrow as pa

        return pa.table(out)


class _Encoder:
    """Ray actor: encodes a batch of chunk texts with the configured embedder (the model loads once per actor)."""

    def __init__(self, embedder: StageConfig) -> None:
        from pipeline.pipeline import build_stage

        self.embedder = build_stage(embedder)

    def __call__(self, batch):
        import pyarrow as pa

        vectors = self.embedder.encode_documents(batch.column("text").to_pylist())
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        return pa.table({
            "row": batch.column("row"),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        })


class RayEngine:
    """A Ray session for one build: started (or joined) on enter, stopped on exit when this engine started it.

    Example:
        >>> with RayEngine(config.ray, Path("indexes/offline")) as engine:
        ...     chunks = engine.chunk(documents, config.embedder, config.chunking)
        ...     vectors = engine.encode([c.text for c in chunks], config.embedder)
    """

    def __init__(self, params: RayParams, index_path: Path, *, show_progress: bool = False) -> None:
        self.params = params
        base = Path(params.output) if params.output else Path(index_path)
        self.work_dir = base / f"{WORK_PREFIX}{secrets.token_hex(4)}"
        self.show_progress = show_progress
        self._started = False
        self._ray = None

    def __enter__(self) -> RayEngine:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.params.temp_dir:
                temp_dir = str(Path(self.params.temp_dir).resolve())
                if len(temp_dir) > MAX_TEMP_DIR:
                    raise ConfigError(
                        f"ray.temp_dir: {temp_dir} is {len(temp_dir)} characters; Ray puts Unix sockets under it "
                        f"(at most 107 bytes per path), so keep it under {MAX_TEMP_DIR}"
                    )
                kwargs["_temp_dir"] = temp_dir
            try:
                self._init(ray, kwargs)
            except (ConnectionError, TimeoutError) as exc:
                raise ServiceUnavailableError(
                    f"cannot reach the Ray cluster at {self.params.address!r} (ray.address): {exc}; "
                    "check the address, or remove it to run on a local Ray"
                ) from None
            except Exception as exc:  # Ray raises a bare Exception when its local processes start too slowly
                ray.shutdown()
                if self.params.address is not None:
                    raise
                raise ServiceUnavailableError(
                    f"could not start a local Ray: {exc} (Ray gives its processes 30 s; on an overloaded "
                    "machine retry later, or build with --engine local)"
                ) from None
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.show_progress
        self.work_dir.mkdir(parents=True, exist_ok=False)
        resources = ray.cluster_resources()
        logger.info("ray: %s CPUs, %s GPUs; work folder %s", resources.get("CPU", 0), resources.get("GPU", 0),
                    self.work_dir)
        return self

    def _init(self, ray, kwargs: dict[str, Any]) -> None:
        """``ray.init``, tried once more when a local Ray's processes miss Ray's fixed 30 s start-up window."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                ray.init(address=self.params.address, **kwargs)
                return
            except Exception as exc:  # Ray raises a bare Exception for a slow start
                if self.params.address is not None or "timed out during startup" not in str(exc) \
                        or attempt == START_ATTEMPTS:
                    raise
                logger.warning("local Ray did not start in time (attempt %d of %d); retrying", attempt, START_ATTEMPTS)
                ray.shutdown()

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._started:
            self._ray.shutdown()

    def chunk(self, documents: Sequence[Document], embedder: StageConfig, chunking: ChunkingParams) -> list[Chunk]:
        """The chunks of ``documents``, in the order (document, position) the single-process build gives."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "doc_index": np.arange(len(documents), dtype=np.int64),
            "doc_id": [d.doc_id for d in documents],
            "text": [d.text for d in documents],
            "title": [d.title for d in documents],
            "source": [d.source for d in documents],
            "sections": [_sections_json(d) for d in documents],
        })
        out = self.work_dir / "chunks"
        (
            self._dataset(table)
            .map_batches(_Chunker, fn_constructor_kwargs={"embedder": embedder, "chunking": chunking},
                         batch_size=self.params.batch_size, batch_format="pyarrow",
                         **self._pool(gpu=False, rows=table.num_rows))
            .write_parquet(str(out))
        )
        records = pq.read_table(out).sort_by([("doc_index", "ascending"), ("position", "ascending")]).to_pydict()
        return [  # the document's metadata is attached here, not shipped through Arrow and back
            Chunk(chunk_id=c, doc_id=d, text=t, source=s, position=p, start=b, end=e, title=ti, page=pg,
                  headings=tuple(h), metadata=documents[i].metadata)
            for i, c, d, t, s, p, b, e, ti, pg, h in zip(
                records["doc_index"], records["chunk_id"], records["doc_id"], records["text"], records["source"],
                records["position"], records["start"], records["end"], records["title"], records["page"],
                records["headings"],
            )
        ]

    def encode(self, texts: Sequence[str], embedder: StageConfig) -> np.ndarray:
        """float32 (len(texts), dim) document vectors, row i for ``texts[i]``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"row": np.arange(len(texts), dtype=np.int64), "text": list(texts)})
        out = self.work_dir / f"embeddings-{secrets.token_hex(3)}"
        (
            self._dataset(table)
            .map_batches(_Encoder, fn_constructor_kwargs={"embedder": embedder},
                         batch_size=self.params.batch_size, batch_format="pyarrow",
                         **self._pool(gpu=True, rows=table.num_rows))
            .write_parquet(str(out))
        )
        result = pq.read_table(out)
        rows = result.column("row").to_numpy()
        column = result.column("vector").combine_chunks()
        vectors = np.empty((len(texts), column.type.list_size), dtype=np.float32)
        vectors[rows] = column.values.to_numpy().reshape(len(rows), -1)
        if len(rows) != len(texts) or len(np.unique(rows)) != len(texts):
            raise RuntimeError(f"ray encoding returned {len(rows)} rows for {len(texts)} texts")
        return vectors

    def _dataset(self, table):
        """A dataset of ``batch_size``-row blocks, so every actor of the pool gets work."""
        step = self.params.batch_size
        blocks = [table.slice(start, step) for start in range(0, max(table.num_rows, 1), step)]
        return self._ray.data.from_arrow(blocks)

    def _pool(self, gpu: bool, rows: int) -> dict[str, Any]:
        """Actor pool options: one actor per GPU for encoding when there are GPUs, else one per ``cpus_per_actor`` CPUs.

        Never more actors than blocks of ``batch_size`` rows: an actor without a block only costs its start-up.
        """
        blocks = max(1, -(-rows // self.params.batch_size))
        resources = self._ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if gpu else 0
        pool = self._ray.data.ActorPoolStrategy
        if gpus:
            return {"num_gpus": 1, "compute": pool(size=min(blocks, self.params.actors or gpus))}
        per_actor = self.params.cpus_per_actor
        size = self.params.actors or max(1, int(resources.get("CPU", 1)) // per_actor)
        return {"num_cpus": per_actor, "compute": pool(size=min(blocks, size))}
