"""Retrieve-then-rerank pipeline: dense retrieval over FAISS, cross-encoder reranking.

Public API::

    from pipeline import Pipeline, load_config
    pipe = Pipeline.from_yaml("configs/offline.yaml")
    result = pipe.ask("symptoms of vitamin D deficiency")
"""

from pipeline.config import PipelineConfig, load_config
from pipeline.errors import (
    ConfigError,
    CorpusError,
    IndexLockedError,
    IndexMismatchError,
    IndexMissingError,
    InputError,
    ModelNotFoundError,
    RagError,
    StageError,
)
from pipeline.pipeline import Pipeline
from pipeline.types import Chunk, Document, Hit, PipelineResult

__all__ = [
    "Chunk",
    "ConfigError",
    "CorpusError",
    "Document",
    "Hit",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexMissingError",
    "InputError",
    "ModelNotFoundError",
    "Pipeline",
    "PipelineConfig",
    "PipelineResult",
    "RagError",
    "StageError",
    "load_config",
]
