"""Bi-encoder embedder on sentence-transformers (``type: sentence-transformers``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, PositiveInt

from pipeline.device import check_device_name, resolve_device
from pipeline.models import load_sentence_transformer
from pipeline.params import StageParams

logger = logging.getLogger(__name__)


class SentenceTransformerEmbedder:
    """Encodes queries and documents into L2-normalized float32 vectors.

    The model loads on first use, so building the object (and validating a
    config) costs nothing. Documents are batched by sentence-transformers,
    which sorts them by length before padding.
    """

    class Params(StageParams):
        model_keys = ("model",)
        model: str
        batch_size: PositiveInt = 32
        max_length: PositiveInt | None = None
        normalize: bool = True
        query_prompt: str = ""
        document_prompt: str = ""
        device: Annotated[str, AfterValidator(check_device_name)] = "auto"

    def __init__(self, params: Params) -> None:
        self.params = params

    @cached_property
    def model(self):
        device = resolve_device(self.params.device, "embedder.device")
        model = load_sentence_transformer(self.params.model, "embedder.model", device)
        if self.params.max_length is not None:
            model.max_seq_length = self.params.max_length
        logger.info("embedder %s loaded on %s (dim %d, max_length %d)", self.params.model, device,
                    self.dimension_of(model), model.max_seq_length)
        return model

    def load(self) -> SentenceTransformerEmbedder:
        """Load the model now rather than on first use."""
        _ = self.model
        return self

    @staticmethod
    def dimension_of(model) -> int:
        return int(model.get_embedding_dimension())

    @property
    def name(self) -> str:
        return self.params.model

    @property
    def dimension(self) -> int:
        return self.dimension_of(self.model)

    @property
    def max_length(self) -> int:
        """Tokens the model reads per text, special tokens included."""
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32, (n, dim), L2-normalized when ``normalize`` is on."""
        return self._encode(texts, self.params.query_prompt, show_progress=False)

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32, (n, dim), L2-normalized when ``normalize`` is on."""
        return self._encode(texts, self.params.document_prompt, show_progress=show_progress)

    def _encode(self, texts: Sequence[str], prompt: str, show_progress: bool) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            prompt=prompt or None,
            batch_size=self.params.batch_size,
            normalize_embeddings=self.params.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
