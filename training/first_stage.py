"""The pipeline's first stage over an index of one collection's corpus: mines negatives, feeds measuring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from evaluation.collection import Collection
from evaluation.indexes import cached_index_path, ensure_index, index_key
from evaluation.metrics import fold_to_documents
from pipeline.config import PipelineConfig, parse_config
from pipeline.types import Document, Hit


class FirstStage:
    """The pipeline's retriever over an index of ``collection``'s corpus.

    The index is built once under ``cache_dir``, in the same cache as ``scripts/evaluate.py``
    (keyed by corpus, embedder, chunking and index type), so training and evaluation encode a
    corpus once between them.
    """

    def __init__(self, config: PipelineConfig, collection: Collection, cache_dir: Path) -> None:
        self.config = config
        self.collection = collection
        self.cache_dir = Path(cache_dir)

    @cached_property
    def documents(self) -> list[Document]:
        """The corpus, read once."""
        from indexer.corpus import read_corpus

        return read_corpus(self.collection.corpus_path).documents

    @cached_property
    def index_path(self) -> Path:
        """The index of this collection's corpus under ``cache_dir``, built on first use."""
        from indexer.build import corpus_hash

        key = index_key(self.config, corpus_hash(self.documents))
        path = cached_index_path(self.cache_dir, self.collection.name, key)
        return ensure_index(self.collection.corpus_path, self.config, path, key)[0]

    def pipeline(self, retriever: Mapping[str, Any] | None = None):
        """A loaded pipeline over the index; ``retriever`` (a config section) replaces the config's."""
        from pipeline.pipeline import Pipeline

        path = self.index_path
        config = self.config
        if retriever is not None:
            raw = config.to_dict()
            raw["retriever"] = dict(retriever)
            config = parse_config(raw, source=f"{config.source} (retriever {retriever.get('type')})")
        return Pipeline(config, path).load()

    def hits(self, queries: Sequence[str], top_k: int, pipeline=None) -> list[list[Hit]]:
        """The retriever's ``top_k`` hits (chunks, or whole documents without chunking) for each query."""
        if not queries:
            return []
        pipeline = pipeline or self._default
        return pipeline.retriever.search(list(queries), top_k)

    def search(self, queries: Sequence[str], top_k: int) -> list[list[str]]:
        """Ranked document ids for each query, at most ``top_k``; a document ranks where its best chunk does."""
        depth = top_k * 4 if self.config.chunking.enabled else top_k
        return [[d for d, _ in fold_to_documents(row)][:top_k] for row in self.hits(queries, depth)]

    @cached_property
    def _default(self):
        return self.pipeline()
