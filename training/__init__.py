"""Fine-tune a cross-encoder reranker on a collection's train split; measure it behind a first stage.

The recipe, as a library (``scripts/train_reranker.py`` is the command line):

1. :func:`load_groups` reads training groups: a BEIR-layout collection's train split (its judged
   positives, with hard negatives mined by the pipeline's own first stage from the top-k, judged
   positives excluded), optional (title -> text) pseudo-queries from the corpus itself, or any folder
   of ``{"query", "positive", "negatives"}`` JSONL. A dev split of train queries is held back to pick
   the checkpoint; no test split is ever read here.
2. :func:`train_reranker` trains with the sentence-transformers ``CrossEncoderTrainer``: a group-wise
   softmax cross-entropy over one positive and N hard negatives (as FlagEmbedding trains its
   rerankers), or pointwise binary cross-entropy. Checkpoints are resumable; the best dev checkpoint
   is kept.
3. :func:`save_compact` writes the model as fp16 safetensors, and :func:`write_model_card` its card.
4. :func:`measure_reranking` reranks a first stage's top-k with a model and scores nDCG@10 with ranx,
   for a dev split or, after training, a test split.

Example:
    >>> groups = load_groups("../shared/data/scifact", "train", config, cache_dir=Path("runs/cache"))
    >>> report = train_reranker(groups.train, groups.dev, TrainSettings(base="bundled:all-MiniLM-L6-v2",
    ...                         out=Path("models/my-reranker")))
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pipeline.config import PipelineConfig, parse_config
from pipeline.errors import ConfigError, CorpusError, InputError, MissingDependencyError

logger = logging.getLogger(__name__)

LossName = Literal["groupwise", "bce"]
JSONL_FIELDS = ("query", "positive", "negatives")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class TrainingGroup:
    """One query with one relevant passage and its hard negatives (irrelevant passages)."""

    query: str
    positive: str
    negatives: tuple[str, ...]
    origin: str  # "qrels", "pseudo" or "jsonl", for the data counts in the model card


@dataclass(frozen=True, slots=True)
class DevQuery:
    """A held-back train query: its first-stage candidates (doc id, text) and its judged positives."""

    query_id: str
    query: str
    candidates: tuple[tuple[str, str], ...]
    relevant: Mapping[str, int]


@dataclass
class TrainingData:
    """Groups to train on, dev queries to pick the checkpoint on, and where each came from."""

    train: list[TrainingGroup] = field(default_factory=list)
    dev: list[DevQuery] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: TrainingData) -> None:
        self.train.extend(other.train)
        self.dev.extend(other.dev)
        self.sources.extend(other.sources)


@dataclass(frozen=True, slots=True)
class Collection:
    """A BEIR-layout folder's documents (id -> (title, text)), queries and the qrels of one split."""

    name: str
    root: Path
    documents: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_collection(root: str | Path, split: str) -> Collection:
    """Read a BEIR-layout folder: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Only queries judged (score > 0) in ``split`` are kept.

    Raises:
        CorpusError: a file is missing, or the split judges no query.
    """
    root = Path(root)
    corpus = next((root / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (root / n).is_file()), None)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if corpus is None:
        raise CorpusError(f"{root} has no corpus.jsonl[.gz]; expected a BEIR-layout collection")
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise CorpusError(f"{root} has no qrels for split {split!r} ({qrels_path}); splits found: {found or 'none'}")
    documents = {
        str(r["_id"]): ((r.get("title") or "").strip(), (r.get("text") or "").strip()) for r in _read_jsonl(corpus)
    }
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] == "query-id":
                continue
            if int(float(row[2])) > 0 and row[1] in documents:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    queries = {str(r["_id"]): r["text"] for r in _read_jsonl(root / "queries.jsonl") if str(r["_id"]) in qrels}
    if not queries:
        raise CorpusError(f"no query of {root / 'queries.jsonl'} is judged in {qrels_path}")
    return Collection(root.name, root, documents, queries, {q: qrels[q] for q in queries})


def dev_query_ids(collection: Collection, dev_queries: int, seed: int = 42) -> list[str]:
    """The train queries :func:`load_groups` holds back as dev with the same ``dev_queries`` and ``seed``."""
    query_ids = list(collection.queries)
    random.Random(seed).shuffle(query_ids)
    return query_ids[:dev_queries]


def document_text(title: str, text: str) -> str:
    """What the index stores for a whole document, and so what the reranker reads: ``title + " " + text``."""
    return f"{title} {text}".strip()


def load_groups(
    root: str | Path,
    split: str,
    config: PipelineConfig,
    *,
    cache_dir: Path,
    num_negatives: int = 7,
    mine_top_k: int = 30,
    dev_queries: int = 0,
    dev_top_k: int = 20,
    pseudo_queries: int = 0,
    max_queries: int | None = None,
    seed: int = 42,
) -> TrainingData:
    """Training groups from ``root``: a BEIR collection (``qrels/<split>.tsv``) or a folder of JSONL groups.

    Args:
        config: the pipeline whose first stage mines the hard negatives (its retriever over an index
            of the collection's corpus, built under ``cache_dir`` on first use).
        num_negatives: negatives per group, sampled from the first stage's top ``mine_top_k``
            documents that are not judged relevant (from fewer when fewer are left).
        dev_queries: judged queries held back (seeded) to choose the checkpoint; their first-stage
            top ``dev_top_k`` becomes the dev reranking task.
        pseudo_queries: extra groups whose query is a corpus document's title and whose positive is
            that document's text without its title; negatives are other documents' texts, also
            without titles, so the title's absence cannot give the answer away.
        max_queries: use at most this many judged train queries (seeded sample); None for all.

    Raises:
        CorpusError: the folder is neither a BEIR collection with ``split`` nor holds JSONL groups.
        InputError: a JSONL line is not a ``{"query", "positive", "negatives"}`` object.
    """
    root = Path(root)
    if num_negatives < 1:
        raise InputError(f"num_negatives must be >= 1, got {num_negatives}")
    if not (root / "qrels").is_dir():
        return _jsonl_groups(root)
    rng = random.Random(seed)
    collection = read_collection(root, split)
    query_ids = list(collection.queries)
    rng.shuffle(query_ids)
    dev_ids, train_ids = query_ids[:dev_queries], query_ids[dev_queries:]
    if max_queries is not None:
        train_ids = train_ids[:max_queries]
    searcher = FirstStage(config, collection, cache_dir)
    data = TrainingData()
    # Labelled groups: one per (query, judged positive).
    found = searcher.search([collection.queries[q] for q in train_ids], mine_top_k)
    for qid, ranked in zip(train_ids, found):
        judged = collection.qrels[qid]
        pool = [d for d in ranked if d not in judged]
        for pos in sorted(judged):
            negatives = _sample(pool, num_negatives, rng)
            if negatives:
                texts = tuple(document_text(*collection.documents[d]) for d in negatives)
                data.train.append(
                    TrainingGroup(collection.queries[qid], document_text(*collection.documents[pos]), texts, "qrels")
                )
    labelled = len(data.train)
    # Pseudo-queries: title -> its own text, over documents not judged for any dev query.
    if pseudo_queries:
        held = {d for q in dev_ids for d in collection.qrels[q]}
        usable = sorted(
            d for d, (title, text) in collection.documents.items()
            if d not in held and len(title.split()) >= 4 and len(text.split()) >= 30
        )
        chosen = rng.sample(usable, min(pseudo_queries, len(usable)))
        found = searcher.search([collection.documents[d][0] for d in chosen], mine_top_k)
        for doc_id, ranked in zip(chosen, found):
            pool = [d for d in ranked if d != doc_id and collection.documents[d][1]]
            negatives = _sample(pool, num_negatives, rng)
            if negatives:
                title, text = collection.documents[doc_id]
                data.train.append(
                    TrainingGroup(title, text, tuple(collection.documents[d][1] for d in negatives), "pseudo")
                )
    # Dev: the first stage's top dev_top_k for held-back queries, as the reranker will see them.
    found = searcher.search([collection.queries[q] for q in dev_ids], dev_top_k)
    for qid, ranked in zip(dev_ids, found):
        candidates = tuple((d, document_text(*collection.documents[d])) for d in ranked)
        data.dev.append(DevQuery(qid, collection.queries[qid], candidates, dict(collection.qrels[qid])))
    data.sources.append({
        "collection": collection.name, "path": str(root), "split": split,
        "train_queries": len(train_ids), "dev_queries": len(dev_ids),
        "labelled_groups": labelled, "pseudo_query_groups": len(data.train) - labelled,
        "first_stage": config.retriever.type, "mine_top_k": mine_top_k, "num_negatives": num_negatives,
    })
    logger.info("%s/%s: %d labelled groups from %d queries, %d pseudo-query groups, %d dev queries",
                collection.name, split, labelled, len(train_ids), len(data.train) - labelled, len(dev_ids))
    return data


def _clock(resumed_from: Path | None):
    """A trainer callback timing a run across resumes: each checkpoint records the seconds spent so far."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        FILE = "elapsed.json"

        def __init__(self) -> None:
            self.before = 0.0
            if resumed_from is not None and (resumed_from / self.FILE).is_file():
                self.before = float(json.loads((resumed_from / self.FILE).read_text(encoding="utf-8"))["seconds"])
            self.start = time.perf_counter()

        def seconds(self) -> float:
            return self.before + time.perf_counter() - self.start

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.FILE).write_text(json.dumps({"seconds": self.seconds()}), encoding="utf-8")

    return Clock()


def _sample(pool: Sequence[str], k: int, rng: random.Random) -> list[str]:
    return rng.sample(list(pool), min(k, len(pool)))


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _jsonl_groups(root: Path) -> TrainingData:
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise CorpusError(
            f"{root} is neither a BEIR collection (corpus.jsonl + qrels/) nor a folder of .jsonl training groups"
        )
    data = TrainingData()
    for path in files:
        for lineno, record in enumerate(_read_jsonl(path), start=1):
            if not isinstance(record, dict) or any(k not in record for k in JSONL_FIELDS):
                raise InputError(f"{path}:{lineno}: expected an object with keys {', '.join(JSONL_FIELDS)}")
            negatives = record["negatives"]
            if not isinstance(negatives, list) or not negatives:
                raise InputError(f"{path}:{lineno}: 'negatives' must be a non-empty list of passages")
            data.train.append(TrainingGroup(str(record["query"]), str(record["positive"]),
                                            tuple(str(n) for n in negatives), "jsonl"))
    data.sources.append({"collection": root.name, "path": str(root), "jsonl_groups": len(data.train)})
    return data


# --------------------------------------------------------------------------- first stage


class FirstStage:
    """The pipeline's retriever over an index of one collection's corpus, as ranked document ids.

    The index is built once under ``cache_dir`` (keyed by corpus, embedder and chunking) and
    reused. Chunk hits are folded to documents: a document ranks where its best chunk ranks.
    """

    def __init__(self, config: PipelineConfig, collection: Collection, cache_dir: Path) -> None:
        self.config = config
        self.collection = collection
        self.cache_dir = Path(cache_dir)

    @cached_property
    def index_path(self) -> Path:
        """The index of this collection's corpus under ``cache_dir``, built on first use (read and hashed once).

        The same cache as ``scripts/evaluate.py`` (keyed by corpus, embedder, chunking and
        index type), so training and evaluation encode a corpus once between them.
        """
        from evaluation.indexes import cached_index_path, ensure_index, index_key
        from indexer.build import corpus_hash
        from indexer.corpus import read_corpus

        corpus = next(p for p in (self.collection.root / "corpus.jsonl", self.collection.root / "corpus.jsonl.gz")
                      if p.is_file())
        key = index_key(self.config, corpus_hash(read_corpus(corpus).documents))
        path, _ = ensure_index(corpus, self.config, cached_index_path(self.cache_dir, self.collection.name, key), key)
        return path

    def pipeline(self, retriever: Mapping[str, Any] | None = None):
        from pipeline.pipeline import Pipeline

        path = self.index_path
        config = self.config
        if retriever is not None:
            raw = config.to_dict()
            raw["retriever"] = dict(retriever)
            config = parse_config(raw, source=f"{config.source} (retriever {retriever.get('type')})")
        return Pipeline(config, path).load()

    def search(self, queries: Sequence[str], top_k: int, pipeline=None) -> list[list[str]]:
        """Ranked document ids for each query (at most ``top_k``, after folding chunks)."""
        return [[doc_id for doc_id, _ in row] for row in self.search_scored(queries, top_k, pipeline)]

    def search_scored(self, queries: Sequence[str], top_k: int, pipeline=None) -> list[list[tuple[str, float]]]:
        """``(doc id, first-stage score)`` best first for each query; a document scores as its best chunk."""
        if not queries:
            return []
        pipeline = pipeline or self._default
        hits = pipeline.retriever.search(list(queries), top_k * 4 if self.config.chunking.enabled else top_k)
        ranked = []
        for row in hits:
            seen: dict[str, float] = {}
            for hit in row:
                seen.setdefault(hit.doc_id, float(hit.score))
            ranked.append(list(seen.items())[:top_k])
        return ranked

    @cached_property
    def _default(self):
        return self.pipeline()


# --------------------------------------------------------------------------- training


@dataclass
class TrainSettings:
    """Hyperparameters; the defaults are the CPU recipe that trained ``models/minilm-reranker``."""

    base: str
    out: Path
    work_dir: Path | None = None  # checkpoints; default runs/train/<out name>
    loss: LossName = "groupwise"
    epochs: float = 1.0
    batch_size: int = 4  # groups per step (groupwise); BCE uses batch_size * (1 + negatives) pairs
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 192
    seed: int = 42
    save_steps: int = 50
    eval_steps: int | None = None  # default: save_steps
    max_steps: int = -1
    device: str = "auto"
    progress: bool = True
    resume: bool = True


@dataclass
class TrainReport:
    """What a run did: steps, losses, time, throughput and the chosen checkpoint's dev score."""

    steps: int
    train_pairs: int
    seconds: float
    pairs_per_second: float
    first_losses: list[float]
    last_losses: list[float]
    dev_history: list[dict[str, float]]
    best_checkpoint: str | None
    dev_ndcg10: float | None


def train_reranker(groups: Sequence[TrainingGroup], dev: Sequence[DevQuery], settings: TrainSettings):
    """Fine-tune ``settings.base`` on ``groups``; return the trained CrossEncoder and a :class:`TrainReport`.

    With ``dev`` queries, each save also scores nDCG@10 on the dev reranking task, and the best
    checkpoint is loaded at the end. A run interrupted after a checkpoint resumes from it when
    started again with the same settings (``resume``).
    """
    try:
        import accelerate  # noqa: F401 - the trainer needs it; fail here with the fix, not deep inside
        from datasets import Dataset
    except ImportError as exc:
        raise MissingDependencyError(
            f"training needs the '{exc.name}' package; install it with: pip install -e '.[train]'"
        ) from None
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers.trainer_utils import get_last_checkpoint

    from pipeline.device import resolve_device
    from pipeline.models import resolve_model

    if not groups:
        raise InputError("no training groups: the data gave no query with both a positive and a negative")
    num_negatives = min(len(g.negatives) for g in groups)
    device = resolve_device(settings.device, "--device")
    resolved = resolve_model(settings.base, "--base")
    model = CrossEncoder(resolved.location, num_labels=1, max_length=settings.max_length, device=device,
                         local_files_only=resolved.local)
    model.model.float()  # train in fp32: bf16/fp16 on the CPU kept an earlier attempt from learning
    dataset, loss = _dataset_and_loss(groups, num_negatives, settings.loss, model, BinaryCrossEntropyLoss, Dataset)
    batch = settings.batch_size if settings.loss == "groupwise" else settings.batch_size * (1 + num_negatives)
    work_dir = settings.work_dir or Path("runs/train") / settings.out.name
    evaluator = None
    if dev:
        samples = [{"query": d.query, "positive": [t for i, t in d.candidates if i in d.relevant],
                    "documents": [t for _, t in d.candidates]} for d in dev]
        evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="dev",
                                                   batch_size=32, show_progress_bar=False)
    args = CrossEncoderTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=batch,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type="linear",
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=5,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=settings.eval_steps or settings.save_steps,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model="eval_dev_ndcg@10" if evaluator else None,
        greater_is_better=True,
        use_cpu=device == "cpu",
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=not settings.progress,
        report_to="none",
    )
    last = get_last_checkpoint(str(work_dir)) if settings.resume and work_dir.is_dir() else None
    clock = _clock(Path(last) if last else None)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                                  callbacks=[clock])
    if last:
        logger.info("resuming from %s (%.0f s of training before it)", last, clock.before)
    result = trainer.train(resume_from_checkpoint=last)
    seconds = clock.seconds()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    dev_history = [{"step": e["step"], "ndcg@10": e["eval_dev_ndcg@10"]}
                   for e in trainer.state.log_history if "eval_dev_ndcg@10" in e]
    pairs = result.global_step * batch * (1 + num_negatives if settings.loss == "groupwise" else 1)
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)
    train_seconds = seconds - eval_seconds
    best = max(dev_history, key=lambda e: e["ndcg@10"]) if dev_history else None
    report = TrainReport(
        steps=result.global_step, train_pairs=pairs, seconds=seconds,
        pairs_per_second=pairs / train_seconds if train_seconds > 0 else math.nan,
        first_losses=losses[:5], last_losses=losses[-5:], dev_history=dev_history,
        best_checkpoint=trainer.state.best_model_checkpoint, dev_ndcg10=best["ndcg@10"] if best else None,
    )
    return model, report


def _dataset_and_loss(groups, num_negatives, loss_name, model, bce_cls, dataset_cls):
    """Columns for the chosen loss: (query, positive, negative_1..n) or (query, passage, label)."""
    if loss_name == "groupwise":
        columns: dict[str, list[str]] = {"query": [g.query for g in groups], "positive": [g.positive for g in groups]}
        for i in range(num_negatives):
            columns[f"negative_{i + 1}"] = [g.negatives[i] for g in groups]
        return dataset_cls.from_dict(columns), GroupwiseLoss(model)
    if loss_name == "bce":
        import torch

        rows = {"query": [], "passage": [], "label": []}
        for g in groups:
            for passage, label in [(g.positive, 1.0)] + [(n, 0.0) for n in g.negatives[:num_negatives]]:
                rows["query"].append(g.query)
                rows["passage"].append(passage)
                rows["label"].append(label)
        # Weigh positives up to the negatives' count, so the base rate is not a comfortable minimum.
        return dataset_cls.from_dict(rows), bce_cls(model, pos_weight=torch.tensor(float(num_negatives)))
    raise ConfigError(f"unknown loss {loss_name!r}; choose groupwise or bce")


def _groupwise_loss_class():
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
    from torch import nn

    class _GroupwiseLoss(MultipleNegativesRankingLoss):
        """Softmax cross-entropy over the raw logits of [positive, hard negatives], as FlagEmbedding
        trains rerankers: no in-batch negatives, no sigmoid, no scale."""

        def __init__(self, model) -> None:
            super().__init__(model, num_negatives=None, scale=1.0, activation_fn=nn.Identity())

        def get_in_batch_negatives(self, anchors, candidates):
            return iter(())

        def get_config_dict(self) -> dict[str, Any]:
            return {"group": "1 positive + hard negatives", "activation_fn": "identity", "in_batch_negatives": 0}

    return _GroupwiseLoss


def GroupwiseLoss(model):
    """Group-wise (listwise) loss for a CrossEncoder; defined lazily so importing this module stays light."""
    return _groupwise_loss_class()(model)


# --------------------------------------------------------------------------- saving


def save_compact(model, out: Path) -> int:
    """Save ``model`` to ``out`` with fp16 safetensors weights; return the weights' size in bytes.

    The config records ``float32`` as the dtype to load in, so ``CrossEncoder(out)`` computes in fp32
    on the CPU while the file stays half the size.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.model.half()
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        model.model.float()
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


# --------------------------------------------------------------------------- measuring


def ndcg_at_10(qrels: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]]) -> float:
    """Mean nDCG@10 over every query of ``qrels`` (ranx; a query without a ranking scores 0)."""
    from ranx import Qrels, Run, evaluate

    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in rankings.items() if r and q in qrels}
    if not run:
        return 0.0
    return float(evaluate(Qrels({q: dict(v) for q, v in qrels.items()}), Run(run), "ndcg@10", make_comparable=True))


class PairScorer:
    """Scores (query, passage) pairs with a CrossEncoder, remembering each pair's score."""

    def __init__(self, model, batch_size: int = 32) -> None:
        self.model = model
        self.batch_size = batch_size
        self.cache: dict[tuple[str, str], float] = {}
        self.scored = 0
        self.seconds = 0.0

    def score(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[float]:
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        if todo:
            import torch

            start = time.perf_counter()
            order = sorted(range(len(todo)), key=lambda i: len(todo[i][0]) + len(todo[i][1]), reverse=True)
            with torch.inference_mode():
                scores = self.model.predict([todo[i] for i in order], batch_size=self.batch_size,
                                            show_progress_bar=progress, convert_to_numpy=True)
            for i, s in zip(order, scores):
                self.cache[todo[i]] = float(s)
            self.seconds += time.perf_counter() - start
            self.scored += len(todo)
        return [self.cache[p] for p in pairs]


def interpolate(ce_scores: Sequence[float], first_scores: Sequence[float], weight: float) -> list[float]:
    """``(1 - weight) * minmax(ce) + weight * minmax(first)`` over one query's candidates.

    ``weight`` 0 is the cross-encoder alone, 1 the first stage alone. Min-max scaling per query puts
    a cosine, a BM25 score and a sigmoid on one 0..1 scale; a constant list scales to zeros.
    """
    def minmax(values: Sequence[float]) -> list[float]:
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.0 for v in values]

    if not ce_scores:
        return []
    return [(1 - weight) * c + weight * f for c, f in zip(minmax(ce_scores), minmax(first_scores))]


def measure_reranking(
    root: str | Path,
    split: str,
    config: PipelineConfig,
    scorer: PairScorer,
    *,
    cache_dir: Path,
    first_stages: Mapping[str, Mapping[str, Any]],
    top_k: int = 50,
    max_queries: int | None = None,
    query_ids: Sequence[str] | None = None,
    weights: Sequence[float] = (0.0,),
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """nDCG@10 of each first stage alone, reranked, and interpolated with the reranker, on ``split``.

    Args:
        first_stages: name -> retriever section (``{"type": "bm25", "top_k": 50}``); each runs over the
            same index, built from ``config``'s embedder and chunking.
        max_queries: a seeded random subset of the split's queries (all when None); stated in results.
        query_ids: only these queries (for a dev split carved from train); overrides ``max_queries``.
        weights: first-stage weights for :func:`interpolate`; 0 (the reranker alone) is always measured.

    Returns:
        ``{"collection", "split", "queries", "query_subset", "top_k", "results": {name: {"first_stage",
        "reranked", "delta", "interpolated": {weight: nDCG@10}}}}``
    """
    collection = read_collection(root, split)
    qids = list(collection.queries)
    subset = False
    if query_ids is not None:
        qids, subset = [q for q in qids if q in set(query_ids)], True
    elif max_queries is not None and max_queries < len(qids):
        qids, subset = sorted(random.Random(seed).sample(qids, max_queries), key=qids.index), True
    qrels = {q: collection.qrels[q] for q in qids}
    texts = {d: document_text(*v) for d, v in collection.documents.items()}
    stage = FirstStage(config, collection, cache_dir)
    weights = sorted({0.0, *weights})
    results = {}
    for name, retriever in first_stages.items():
        pipe = stage.pipeline(retriever)
        found = stage.search_scored([collection.queries[q] for q in qids], top_k, pipeline=pipe)
        ranked = {q: [d for d, _ in row] for q, row in zip(qids, found)}
        pairs = [(collection.queries[q], texts[d]) for q, row in zip(qids, found) for d, _ in row]
        scorer.score(pairs, progress=progress)
        runs: dict[float, dict[str, list[str]]] = {w: {} for w in weights}
        for q, row in zip(qids, found):
            ce = scorer.score([(collection.queries[q], texts[d]) for d, _ in row])
            for w in weights:
                fused = interpolate(ce, [s for _, s in row], w)
                runs[w][q] = [row[i][0] for i in sorted(range(len(row)), key=lambda i: (-fused[i], i))]
        before = ndcg_at_10(qrels, ranked)
        by_weight = {f"{w:g}": round(ndcg_at_10(qrels, runs[w]), 4) for w in weights}
        after = by_weight["0"]
        results[name] = {"first_stage": round(before, 4), "reranked": after, "delta": round(after - before, 4),
                         "interpolated": by_weight}
        logger.info("%s/%s %s: nDCG@10 %.4f -> %.4f; by first-stage weight %s", collection.name, split, name,
                    before, after, by_weight)
    return {"collection": collection.name, "split": split, "queries": len(qids), "query_subset": subset,
            "top_k": top_k, "results": results}


# --------------------------------------------------------------------------- model card


def write_model_card(out: Path, *, settings: TrainSettings, report: TrainReport | None, sources: Sequence[dict],
                     measurements: Sequence[dict], command: str, size_bytes: int, licences: Mapping[str, str]) -> Path:
    """Write ``out/README.md``: base model, data and licences, hyperparameters, numbers, the command."""
    s = asdict(settings)
    s["out"], s["work_dir"] = str(settings.out), str(settings.work_dir) if settings.work_dir else None
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: text-ranking", "tags: [cross-encoder, reranker]",
        "---", "", f"# {out.name}", "",
        f"A cross-encoder reranker fine-tuned from `{settings.base}` by `scripts/train_reranker.py`. "
        f"Load it with `CrossEncoder(\"{out}\")`; it scores one (query, passage) pair with one logit "
        f"(the pipeline applies a sigmoid). Weights: fp16 safetensors, {size_bytes / 2**20:.1f} MiB; the config "
        "asks for float32, so it computes in fp32 on the CPU.", "",
        "## Data", "",
    ]
    for src in sources:
        lines.append("- " + ", ".join(f"{k}: {v}" for k, v in src.items()))
    lines += ["", "Licences of the training data:", ""]
    lines += [f"- {name}: {lic}" for name, lic in licences.items()]
    lines += ["", "No test split was read for training or for choosing the checkpoint; the dev queries are "
              "held-back train queries.", "", "## Hyperparameters", "", "```json", json.dumps(s, indent=2), "```", ""]
    if report is not None:
        lines += ["## Training", "",
                  f"{report.steps} steps, {report.train_pairs} (query, passage) pairs in {report.seconds / 60:.1f} min "
                  f"({report.pairs_per_second:.1f} pairs/s). Loss: first {_fmt(report.first_losses)}, "
                  f"last {_fmt(report.last_losses)}.", ""]
        if report.dev_history:
            lines += ["Dev nDCG@10 (rerank the first stage's top candidates of held-back train queries) by step: "
                      + ", ".join(f"{e['step']}: {e['ndcg@10']:.4f}" for e in report.dev_history)
                      + f". Kept: {report.best_checkpoint}.", ""]
    if measurements:
        lines += ["## Evaluation (nDCG@10)", "",
                  "Reranked: the first stage's top_k ordered by this model alone. Interpolated: "
                  "(1 - w) x min-max(reranker) + w x min-max(first stage) per query, w chosen on the dev queries.", "",
                  "| collection | split | queries | first stage | top_k | alone | reranked | Δ | w (dev) | interpolated | Δ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in measurements:
            for name, r in m["results"].items():
                queries = f"{m['queries']}{' (subset)' if m.get('query_subset') else ''}"
                w = (m.get("chosen_weights") or {}).get(name)
                fused = r["interpolated"].get(f"{w:g}") if w is not None else None
                tail = (f"{w:g} | {fused:.4f} | {fused - r['first_stage']:+.4f}" if fused is not None else "– | – | –")
                lines.append(f"| {m['collection']} | {m['split']} | {queries} | {name} | {m['top_k']} | "
                             f"{r['first_stage']:.4f} | {r['reranked']:.4f} | {r['delta']:+.4f} | {tail} |")
        lines.append("")
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
