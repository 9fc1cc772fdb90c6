"""Cross-encoder reranker (``reranker.type: cross-encoder``) on sentence-transformers.

Reads query and passage together and scores each pair; scores go through a
sigmoid so they fall in 0..1. The model is loaded with sentence-transformers'
``CrossEncoder``; scoring runs the underlying Hugging Face model directly:

* all pairs are tokenized in one call, the query first capped at
  ``query_max_share`` of ``max_length`` so a long query cannot crowd out the
  passage (as FlagEmbedding does), then the passage truncated to what is left;
* pairs are sorted by token length and padded per batch, under
  ``torch.inference_mode``; the scores come back in input order;
* fp16 on CUDA (``use_fp16``), never on the CPU; ``quantize: int8`` runs the
  linear layers as dynamic int8 on the CPU (weights per output channel, faster,
  slightly different scores), except those matching ``quantize_skip`` (regexes
  over module names), which stay fp32 (benchmarks/README.md measures both);
* a CUDA out-of-memory error halves the batch and retries instead of failing;
* ``weight`` is the cross-encoder's share of the final score: below 1 it mixes in
  the first stage's (min-max scaled; the cross-encoder's calibrated score as it is, or
  also min-max scaled with ``mix: minmax``, :func:`pipeline.scoring.mix_scores`), a
  cheap guard for a weak cross-encoder, chosen on held-out queries, never on test;
* ``backend`` picks the runtime on the CPU: ``torch`` (the reference, and always
  on CUDA, in fp16), ``openvino`` or ``onnx`` (exported once and cached next to the
  model, :mod:`pipeline.rerankers.backends`); ``quantize: int8`` means each
  runtime's own int8. A missing runtime package falls back to torch with a warning;
* the score is ``sigmoid(a * logit + b)`` with ``a, b`` from the model folder's
  ``calibration.json`` when there is one (:mod:`pipeline.rerankers.calibration`;
  ``calibrate: false`` gives the plain sigmoid), and :meth:`CrossEncoderReranker.logits`
  returns the raw logit;
* a passage longer than the window beside the query is truncated (``long_passages: truncate``)
  or split into windows of the model's length overlapping by a quarter, each scored, the passage
  getting its best window's score (``long_passages: windows``); a caller of ``score_many`` can ask
  for either per request (:class:`~pipeline.types.ScoreOptions`: the server's rerank routes do).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field, PositiveInt

from pipeline.batching import run_length_sorted
from pipeline.device import check_device_name, resolve_device
from pipeline.errors import ConfigError, PassageTooLongError
from pipeline.languages import LanguageGuard, card_languages, scripts_of
from pipeline.models import load_cross_encoder, load_tokenizer, resolve_model
from pipeline.params import RerankerParams
from pipeline.protocols import Scorer
from pipeline.rerankers import backends
from pipeline.rerankers.calibration import IDENTITY, Calibration, load_calibration
from pipeline.scoring import RankSettings, rank_hits
from pipeline.types import DEFAULT_SCORE_OPTIONS, Hit, ScoreOptions

logger = logging.getLogger(__name__)

WINDOW_OVERLAP = 0.25  # share of a window that its neighbour repeats (long_passages: windows)


def _check_languages(languages: list[str] | None) -> list[str] | None:
    if languages is not None:
        scripts_of(languages)  # raises ValueError naming the known codes
    return languages


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    return pattern


class CrossEncoderReranker(Scorer):
    """Rescore candidates with a cross-encoder and keep the best ``top_n``."""

    class Params(RerankerParams):  # top_n, weight, mix: how the pipeline ranks with the scores
        model_keys = ("model",)
        model: str
        max_length: PositiveInt = 512
        batch_size: PositiveInt = 16
        use_fp16: bool = True
        query_max_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
        # torch: the reference (and the CUDA path); openvino / onnx: CPU runtimes (the 'fast' extra)
        # auto: chosen by what the CPU has (backends.auto_backend; the choice and why are logged)
        backend: Literal["auto", "torch", "openvino", "onnx"] = "torch"
        quantize: Literal["none", "int8"] = "none"
        # regexes over module names (re.search) left in fp32 under int8, e.g. the feed-forward output
        # projections, "encoder\.layer\.\d+\.output\.dense$" in BERT and XLM-R (closer scores, slower);
        # torch only: where backend auto chooses OpenVINO (which quantizes by NNCF) it is not used
        quantize_skip: list[Annotated[str, AfterValidator(_check_regex)]] = []
        # a passage longer than the model's window: "truncate" scores its first tokens, "windows" scores
        # overlapping windows of the model's length and keeps the best (slower on long passages)
        long_passages: Literal["truncate", "windows"] = "truncate"
        device: Annotated[str, AfterValidator(check_device_name)] = "auto"
        calibrate: bool = True  # apply the model folder's calibration.json (Platt scaling) when it has one
        threads: PositiveInt | None = None  # CPU threads of the openvino/onnx runtime (None: torch's count)
        # languages (or ISO 15924 scripts) the model was trained on; a query or passage in another script is
        # not scored and keeps its first-stage place (None: the model card's `language:`, else no guard)
        languages: Annotated[list[str] | None, AfterValidator(_check_languages)] = None
        # a query or passage written all in capitals (old collections, headlines) is read in lower case: a
        # cased model (XLM-R, e5) reads capitals as other, rarer tokens; an uncased one lowercases anyway
        fold_all_caps: bool = True

    def __init__(self, params: Params) -> None:
        self.params = params
        self._batch_size = params.batch_size
        self._network = None  # the module that scores: the model itself, or its int8 copy (set on load)
        self._runtime = None  # an openvino/onnx runtime: padded numpy features -> logits (set on load)
        self._tokenizer = None
        self._calibration: Calibration | None = None
        self.backend_used: str | None = None  # what scores after load: torch, openvino or onnx
        self.backend_reason: str | None = None  # why, when backend: auto chose it
        self.export_path = None  # the cached export a runtime was loaded from

    @cached_property
    def model(self):
        """The sentence-transformers ``CrossEncoder``, loaded once, in eval mode."""

        device = resolve_device(self.params.device, "reranker.device")
        model = load_cross_encoder(self.params.model, "reranker.model", device, self.params.max_length)
        hf_model = model.model
        on_cuda = device.startswith("cuda")
        if on_cuda and self.params.use_fp16:
            hf_model.half()
        elif not on_cuda:
            hf_model.float()  # a checkpoint saved in fp16 still computes in fp32 on the CPU
        if self.params.quantize == "int8":
            if on_cuda:
                raise ConfigError("reranker.quantize: int8 is a CPU path; use 'none' on CUDA (fp16 is used there)")
            with warnings.catch_warnings():
                # torch marks eager dynamic quantization deprecated (torchao replaces it); torch is
                # pinned, and this path is measured in benchmarks/README.md, so users get no warning
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                self._network = quantize_int8(hf_model, self.params.quantize_skip)
        else:
            self._network = hf_model
        model.eval()
        precision = "fp16" if on_cuda and self.params.use_fp16 else (
            self.params.quantize if self.params.quantize != "none" else "fp32")
        logger.info("reranker %s loaded on %s (max_length %d, %s)", self.params.model, device, self.params.max_length,
                    precision)
        return model

    def _setup(self) -> None:
        """Load what scoring needs once: the torch model, or a tokenizer and a cached openvino/onnx export."""
        if self.backend_used is not None:
            return
        backend = self._backend_choice
        resolved = resolve_model(self.params.model, "reranker.model")
        if backend == "torch":
            self._tokenizer = self.model.tokenizer
        else:
            if not resolved.local:  # a hub id not yet downloaded: let sentence-transformers fetch it once
                _ = self.model
                resolved = resolve_model(self.params.model, "reranker.model")
            from pathlib import Path

            import torch

            folder = Path(resolved.location)
            self._tokenizer = load_tokenizer(str(folder), "reranker.model")
            threads = self.params.threads or torch.get_num_threads()
            self._runtime, self.export_path = backends.load_runtime(
                folder, backend, self.params.quantize, threads, self._fp32_network, self._tokenizer)
            logger.info("reranker %s: %s runtime (quantize %s, %d threads) from %s", self.params.model, backend,
                        self.params.quantize, threads, self.export_path)
        if self._calibration is None:
            self._calibration = load_calibration(resolved.location if resolved.local else None) \
                if self.params.calibrate else IDENTITY
        self.backend_used = backend

    def choose_backend(self) -> str:
        """The backend this stage scores with here (``auto`` resolved, a missing runtime replaced), loading nothing."""
        return self.backend_used or self._backend_choice

    @cached_property
    def _backend_choice(self) -> str:
        """The backend to use here, chosen (and logged) once: the configured one, or torch on CUDA or without
        its package."""
        backend = self.params.backend
        if backend == "auto":
            device = resolve_device(self.params.device, "reranker.device")
            backend, self.backend_reason = backends.auto_backend(self.params.quantize, device)
            logger.info("reranker.backend auto: %s, quantize %s (%s)", backend, self.params.quantize,
                        self.backend_reason)
        if backend == "torch":
            return backend
        if self.params.quantize_skip and self.params.backend != "auto":
            raise ConfigError(f"reranker.quantize_skip applies to backend torch only, not {backend!r}; remove it")
        if self.params.quantize_skip:  # auto chose a runtime that quantizes its own way (OpenVINO: NNCF)
            logger.info("reranker.quantize_skip applies to torch only; backend auto chose %s here", backend)
        device = resolve_device(self.params.device, "reranker.device")
        if device != "cpu":
            logger.info("reranker.backend %s is a CPU runtime; on %s the torch model is used (fp16: %s)",
                        backend, device, self.params.use_fp16)
            if self.params.quantize != "none":
                raise ConfigError("reranker.quantize: int8 is a CPU path; use 'none' on CUDA (fp16 is used there)")
            return "torch"
        if not backends.available(backend, self.params.quantize):
            module, package, extra = backends.RUNTIMES[backend]
            logger.warning("reranker.backend %s needs the packages of the '%s' extra (pip install -e '.[%s]'); "
                           "scoring with torch instead (slower, exact)", backend, extra, extra)
            return "torch"
        return backend

    def _fp32_network(self):
        """The Hugging Face model in fp32 on the CPU, for exporting."""
        return self.model.model.float()

    @classmethod
    def from_model(cls, model, params: Params) -> CrossEncoderReranker:
        """A stage around an already loaded sentence-transformers ``CrossEncoder`` (one just trained, say).

        The model is used as it is (device, dtype, no int8): only the scoring and ranking of the
        stage apply, so a model in memory is measured exactly as the pipeline will rerank with it.
        """
        stage = cls(params)
        stage.__dict__["model"] = model  # what the cached ``model`` property would have loaded
        stage._network = model.model
        stage._tokenizer = model.tokenizer
        stage._calibration = IDENTITY  # an in-memory model has no folder, so no calibration file
        stage.backend_used = "torch"
        if params.languages is None:  # no folder, so no model card to read languages from: no guard
            stage.__dict__["language_guard"] = None
        model.eval()
        return stage

    def describe(self) -> dict[str, object]:
        """The model that scores: type, model, window in tokens, backend, calibration, long-passage mode."""
        return {"type": "cross-encoder", "model": self.params.model, "max_length": self.params.max_length,
                "backend": self.backend_used or self.params.backend, "quantize": self.params.quantize,
                "calibrated": self._calibration not in (None, IDENTITY), "long_passages": self.params.long_passages,
                **({"backend_reason": self.backend_reason} if self.backend_reason else {})}

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance of each passage to the query, float32 in 0..1, in input order.

        The calibrated probability ``sigmoid(a * logit + b)`` when the model folder has a
        ``calibration.json`` (and ``calibrate`` is on), else ``sigmoid(logit)``.
        """
        return self.score_many([(query, passages)])[0]

    def logits(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """The cross-encoder's raw logit per passage (float32, input order), before any calibration."""
        return self.logits_many([(query, passages)])[0]

    def score_many(
        self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> list[np.ndarray]:
        """:meth:`score` for several ``(query, passages)`` requests, all pairs in one length-sorted run.

        Used by the server's micro-batching queue: pairs of concurrent requests share batches.
        ``options.raw`` gives the raw logits (:meth:`logits`); ``options.long`` and ``max_tokens``
        say what happens to passages longer than the model's window (:class:`~pipeline.types.ScoreOptions`).
        """
        logits = self.logits_many(requests, options)
        if options.raw:
            return logits
        calibration = self._calibration or IDENTITY  # None: nothing was scored (all NaN), no model loaded
        return [calibration.apply(row) for row in logits]

    def logits_many(
        self, requests: Sequence[tuple[str, Sequence[str]]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> list[np.ndarray]:
        """:meth:`logits` for several requests, all pairs in one length-sorted run.

        A pair the model cannot read (query or passage outside ``languages``) is not scored: NaN.
        A passage scored by windows gets its best window's logit.
        """
        sizes = [len(passages) for _, passages in requests]
        guard = self.language_guard
        readable = np.ones(sum(sizes), dtype=bool)
        if guard is not None:  # the language guard: only pairs in the model's languages are scored
            masks = [guard.readable_mask(q, ps)[0] for q, ps in requests]  # detected once per pair
            readable = np.array([ok for mask in masks for ok in mask], dtype=bool)
            requests = [(q, [p for p, ok in zip(ps, mask) if ok]) for (q, ps), mask in zip(requests, masks)]
        if not readable.any():
            return [np.full(size, np.nan, dtype=np.float32) for size in sizes]
        self._setup()
        features: dict[str, list[list[int]]] = {}
        owners: list[int] = []  # for each scored piece, the readable passage it belongs to
        count = 0
        for query, passages in requests:
            if len(passages):
                pieces, owner = self._pieces(query, passages, options)
                for key, rows in self._tokenize(query, pieces).items():
                    features.setdefault(key, []).extend(rows)
                owners.extend(count + i for i in owner)
                count += len(passages)
        lengths = [len(ids) for ids in features["input_ids"]]
        if self._runtime is not None:
            runtime, tokenizer = self._runtime, self._tokenizer

            def forward_runtime(indices: np.ndarray) -> np.ndarray:
                batch = tokenizer.pad({k: [v[i] for i in indices] for k, v in features.items()}, return_tensors="np")
                return runtime({k: np.asarray(t, dtype=np.int64) for k, t in batch.items()})

            logits, self._batch_size = run_length_sorted(lengths, self._batch_size, forward_runtime)
        else:
            logits = self._torch_logits(features, lengths)
        best = np.full(count, -np.inf, dtype=np.float32)
        np.maximum.at(best, np.asarray(owners, dtype=np.int64), np.asarray(logits, dtype=np.float32))
        full = np.full(readable.size, np.nan, dtype=np.float32)
        full[readable] = best
        return np.split(full, np.cumsum(sizes)[:-1])

    def _pieces(self, query: str, passages: Sequence[str], options: ScoreOptions) -> tuple[list[str], list[int]]:
        """The texts to score for ``passages`` and, for each, the passage it came from (:class:`ScoreOptions`).

        A passage that fits the model's window beside the (capped) query is scored whole. A longer one
        is cut to ``options.max_tokens`` first, then truncated from ``options.side``, refused, or split into
        windows that overlap by a quarter of their length (``options.long``, default ``long_passages``).
        """
        long = options.long or self.params.long_passages
        if long == "truncate" and options.side == "right" and options.max_tokens is None:
            return list(passages), list(range(len(passages)))  # the tokenizer truncates the end as it tokenizes
        tokenizer = self._tokenizer
        cap = max(1, int(self.params.max_length * self.params.query_max_share))
        query_tokens = min(len(tokenizer(query, add_special_tokens=False)["input_ids"]), cap)
        budget = max(1, self.params.max_length - query_tokens - tokenizer.num_special_tokens_to_add(pair=True))
        offsets = tokenizer(list(passages), add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]  # (no warning: long passages are expected here)
        pieces: list[str] = []
        owners: list[int] = []
        for i, (passage, spans) in enumerate(zip(passages, offsets)):
            if options.max_tokens is not None and len(spans) > options.max_tokens:
                spans = spans[: options.max_tokens]
                passage = passage[: spans[-1][1]]
            if len(spans) <= budget:
                pieces.append(passage)
                owners.append(i)
                continue
            if long == "error":
                raise PassageTooLongError(
                    f"passage {i} is {len(spans)} tokens; {self.params.model} reads {budget} beside this query: "
                    "shorten it, truncate it, or score it by windows")
            if long == "truncate":
                start, end = (0, budget) if options.side == "right" else (len(spans) - budget, len(spans))
                windows = [(start, end)]
            else:
                windows = window_spans(len(spans), budget)
            for start, end in windows:
                pieces.append(passage[spans[start][0]: spans[end - 1][1]])
                owners.append(i)
        return pieces, owners

    def _torch_logits(self, features: dict[str, list[list[int]]], lengths: list[int]) -> np.ndarray:
        import torch

        model = self.model
        network = self._network
        device = next(model.model.parameters()).device
        tokenizer = model.tokenizer

        def forward(indices: np.ndarray) -> np.ndarray:
            batch = tokenizer.pad({k: [v[i] for i in indices] for k, v in features.items()}, return_tensors="pt")
            with torch.inference_mode():
                logits = network(**{k: t.to(device) for k, t in batch.items()}).logits
            return logits.float().view(-1).cpu().numpy()

        logits, self._batch_size = run_length_sorted(
            lengths, self._batch_size, forward,
            is_oom=lambda exc: isinstance(exc, torch.OutOfMemoryError), on_oom=_empty_cuda_cache,
        )
        return logits

    def _tokenize(self, query: str, passages: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token ids of every (query, passage) pair, unpadded; the query capped first, then the passage."""
        self._setup()
        if self.params.fold_all_caps:
            query, passages = fold_all_caps(query), [fold_all_caps(p) for p in passages]
        tokenizer = self._tokenizer
        cap = max(1, int(self.params.max_length * self.params.query_max_share))
        offsets = tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) > cap:
            query = query[: offsets[cap - 1][1]]
        encoded = tokenizer(
            [query] * len(passages), list(passages), truncation="only_second", max_length=self.params.max_length,
            padding=False, return_attention_mask=True,
        )
        return {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}

    @cached_property
    def language_guard(self) -> LanguageGuard | None:
        """The languages the model reads (``languages``, else its model card's), or None: it reads anything."""
        languages = self.params.languages
        if languages is None:
            resolved = resolve_model(self.params.model, "reranker.model")
            languages = card_languages(resolved.location) if resolved.local else None
            try:
                scripts_of(languages or [])
            except ValueError:  # a card that says "multilingual" (or a code we do not know): no guard
                logger.info("reranker %s: model card languages %s include unknown codes; no language guard",
                            self.params.model, languages)
                languages = None
        return LanguageGuard(languages) if languages else None

    def skip_note(self, query: str, passages: Sequence[str]) -> str | None:
        """One line saying which candidates the language guard kept from the model, or None when none.

        Example: ``reranker skipped 3 of 50 candidates: language zh not supported by models/minilm-reranker (reads en)``
        """
        guard = self.language_guard
        if guard is None:
            return None
        _, skipped = guard.readable_mask(query, passages)
        if not skipped:
            return None
        what = ", ".join(f"{n} in {name}" if len(skipped) > 1 else name for name, n in skipped.items())
        kind = "" if what.startswith("query") else "language "
        return (f"reranker skipped {sum(skipped.values())} of {len(passages)} candidates: {kind}{what} not "
                f"supported by {self.params.model} (reads {', '.join(guard.languages)}); they keep the first "
                "stage's order")

    def load(self) -> CrossEncoderReranker:
        """Load the model (or its cached openvino/onnx export, exporting it first if needed) now."""
        self._setup()
        return self

    def rerank(
        self, query: str, hits: Sequence[Hit], top_n: int | None = None, weight: float | None = None
    ) -> list[Hit]:
        """New hits sorted by score (ties keep the first stage's order), first ``top_n`` kept.

        A convenience over :meth:`score` and :func:`pipeline.scoring.rank_hits` with this stage's
        settings (``top_n``, ``weight``, ``mix``; per-call ``top_n`` and ``weight`` override them).
        """
        return rank_hits(hits, self.score(query, [hit.text for hit in hits]),
                         RankSettings.from_params(self.params, top_n, weight))


def fold_all_caps(text: str, min_letters: int = 8) -> str:
    """``text`` in lower case when it is written all in capitals (at least ``min_letters`` cased letters,
    none of them lower case); otherwise unchanged. Scripts without case (Chinese) are never changed.

    Example:
        >>> fold_all_caps("MEASUREMENT OF DIELECTRIC CONSTANT"), fold_all_caps("What is TSS at IBM?")
        ('measurement of dielectric constant', 'What is TSS at IBM?')
    """
    upper = 0
    for char in text:
        if char.islower():
            return text
        upper += char.isupper()
    return text.lower() if upper >= min_letters else text


def window_spans(length: int, size: int, overlap: float = WINDOW_OVERLAP) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of at most ``size`` covering ``length`` tokens, neighbours overlapping.

    Windows step by ``size`` less ``overlap`` of it; the last one ends at ``length`` (it may overlap its
    neighbour more), so no token is left out and no window is short.

    Example:
        >>> window_spans(10, 4)
        [(0, 4), (3, 7), (6, 10)]
    """
    if length <= size:
        return [(0, length)]
    step = max(1, size - int(size * overlap))
    spans = [(start, start + size) for start in range(0, length - size, step)]
    return [*spans, (length - size, length)]


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quantize_int8(network, skip: Sequence[str] = ()):
    """A copy of ``network`` with its ``nn.Linear`` layers as dynamic int8 (per-channel weights).

    Layers whose module name matches a regex in ``skip`` stay in fp32.
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    patterns = [re.compile(p) for p in skip]
    spec = {name: per_channel_dynamic_qconfig for name, module in network.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(p.search(name) for p in patterns)}
    if not spec:
        raise ConfigError(f"reranker.quantize_skip {list(skip)} leaves no linear layer to quantize")
    return quantize_dynamic(network, spec, dtype=torch.qint8)
