"""Cross-encoder reranker (``reranker.type: cross-encoder``) on sentence-transformers.

Reads query and passage together and scores each pair; scores go through a
sigmoid so they fall in 0..1. On CUDA the model runs in fp16 (``use_fp16``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, PositiveInt

from pipeline.config import StageParams
from pipeline.device import check_device_name, resolve_device
from pipeline.models import load_cross_encoder
from pipeline.registry import register
from pipeline.types import Hit

logger = logging.getLogger(__name__)


@register("reranker", "cross-encoder")
class CrossEncoderReranker:
    """Rescore candidates with a cross-encoder and keep the best ``top_n``."""

    class Params(StageParams):
        model: str
        top_n: PositiveInt = 5
        max_length: PositiveInt = 512
        batch_size: PositiveInt = 16
        use_fp16: bool = True
        device: Annotated[str, AfterValidator(check_device_name)] = "auto"

    def __init__(self, params: Params) -> None:
        self.params = params

    @cached_property
    def model(self):
        device = resolve_device(self.params.device, "reranker.device")
        model = load_cross_encoder(self.params.model, "reranker.model", device, self.params.max_length)
        if device.startswith("cuda") and self.params.use_fp16:
            model.model.half()
        logger.info("reranker %s loaded on %s (max_length %d, fp16 %s)", self.params.model, device,
                    self.params.max_length, device.startswith("cuda") and self.params.use_fp16)
        return model

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to the query, float32 in 0..1, in input order."""
        import torch

        if len(passages) == 0:
            return np.zeros(0, dtype=np.float32)
        scores = self.model.predict(
            [(query, passage) for passage in passages],
            batch_size=self.params.batch_size,
            activation_fn=torch.nn.Sigmoid(),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def rerank(self, query: str, hits: Sequence[Hit], top_n: int | None = None) -> list[Hit]:
        """New hits sorted by cross-encoder score (ties keep the first stage's order), first ``top_n`` kept."""
        top_n = top_n or self.params.top_n
        return rank_by_scores(hits, self.score(query, [hit.text for hit in hits]), top_n)


def rank_by_scores(hits: Sequence[Hit], scores: Sequence[float], top_n: int) -> list[Hit]:
    """New hits sorted by ``scores`` (ties keep the first stage's order), first ``top_n`` kept."""
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].rank))
    return [replace(hits[i], score=float(scores[i]), rank=rank) for rank, i in enumerate(order[:top_n], start=1)]
