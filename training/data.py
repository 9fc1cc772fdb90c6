"""Training data for a reranker: groups of (query, positive, hard negatives) and held-back dev queries.

Groups come from a BEIR-layout collection's train split (judged positives; hard negatives mined
by the pipeline's own first stage, judged positives excluded), from (title -> text) pseudo-queries
over the corpus itself, or from any folder of ``{"query", "positive", "negatives"}`` JSONL. A dev
split of train queries is held back to pick the checkpoint; no test split is ever read here.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evaluation.collection import Collection, load_collection
from pipeline.config import PipelineConfig
from pipeline.errors import CorpusError, InputError
from training.first_stage import FirstStage

logger = logging.getLogger(__name__)

JSONL_FIELDS = ("query", "positive", "negatives")


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


def document_text(title: str, text: str) -> str:
    """What the index stores for a whole document, and so what the reranker reads: ``title + " " + text``."""
    return f"{title} {text}".strip()


def source_licence(folder: Path, unknown: str = "unknown: see the data's own documentation") -> str:
    """The licence line of a collection's ``SOURCE.md`` (as ``../shared/data`` folders have), else ``unknown``."""
    source = Path(folder) / "SOURCE.md"
    if source.is_file():
        for line in source.read_text(encoding="utf-8").splitlines():
            if "licen" in line.lower():
                return line.strip("-* ").replace("**", "")
    return unknown


def dev_query_ids(collection: Collection, dev_queries: int, seed: int = 42) -> list[str]:
    """The train queries :func:`load_groups` holds back as dev with the same ``dev_queries`` and ``seed``."""
    query_ids = list(collection.queries)
    random.Random(seed).shuffle(query_ids)
    return query_ids[:dev_queries]


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
        dev_queries: judged queries held back (seeded, :func:`dev_query_ids`) to choose the
            checkpoint; their first-stage top ``dev_top_k`` becomes the dev reranking task.
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
    searcher = FirstStage(config, load_collection(root, split), cache_dir)
    documents = {doc.doc_id: (doc.title, doc.text) for doc in searcher.documents}
    collection = _judged_in_corpus(searcher.collection, documents)
    query_ids = list(collection.queries)
    rng.shuffle(query_ids)
    dev_ids, train_ids = query_ids[:dev_queries], query_ids[dev_queries:]
    if max_queries is not None:
        train_ids = train_ids[:max_queries]
    data = TrainingData()
    # Labelled groups: one per (query, judged positive).
    found = searcher.search([collection.queries[q] for q in train_ids], mine_top_k)
    for qid, ranked in zip(train_ids, found):
        judged = collection.qrels[qid]
        pool = [d for d in ranked if d not in judged]
        for pos in sorted(judged):
            negatives = _sample(pool, num_negatives, rng)
            if negatives:
                texts = tuple(document_text(*documents[d]) for d in negatives)
                positive = document_text(*documents[pos])
                data.train.append(TrainingGroup(collection.queries[qid], positive, texts, "qrels"))
    labelled = len(data.train)
    # Pseudo-queries: title -> its own text, over documents not judged for any dev query.
    if pseudo_queries:
        held = {d for q in dev_ids for d in collection.qrels[q]}
        usable = sorted(
            d for d, (title, text) in documents.items()
            if d not in held and len(title.split()) >= 4 and len(text.split()) >= 30
        )
        chosen = rng.sample(usable, min(pseudo_queries, len(usable)))
        found = searcher.search([documents[d][0] for d in chosen], mine_top_k)
        for doc_id, ranked in zip(chosen, found):
            pool = [d for d in ranked if d != doc_id and documents[d][1]]
            negatives = _sample(pool, num_negatives, rng)
            if negatives:
                title, text = documents[doc_id]
                data.train.append(TrainingGroup(title, text, tuple(documents[d][1] for d in negatives), "pseudo"))
    # Dev: the first stage's top dev_top_k for held-back queries, as the reranker will see them.
    found = searcher.search([collection.queries[q] for q in dev_ids], dev_top_k)
    for qid, ranked in zip(dev_ids, found):
        candidates = tuple((d, document_text(*documents[d])) for d in ranked)
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


def _judged_in_corpus(collection: Collection, documents: Mapping[str, Any]) -> Collection:
    """``collection`` without judgements of documents missing from the corpus (nothing to train on)."""
    qrels = {q: {d: s for d, s in judged.items() if d in documents} for q, judged in collection.qrels.items()}
    queries = {q: text for q, text in collection.queries.items() if qrels[q]}
    if not queries:
        raise CorpusError(f"no judged document of {collection.root} split {collection.split!r} is in its corpus")
    return replace(collection, queries=queries, qrels={q: qrels[q] for q in queries})


def _sample(pool: Sequence[str], k: int, rng: random.Random) -> list[str]:
    return rng.sample(list(pool), min(k, len(pool)))


def read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
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
        for lineno, record in enumerate(read_jsonl(path), start=1):
            if not isinstance(record, dict) or any(k not in record for k in JSONL_FIELDS):
                raise InputError(f"{path}:{lineno}: expected an object with keys {', '.join(JSONL_FIELDS)}")
            negatives = record["negatives"]
            if not isinstance(negatives, list) or not negatives:
                raise InputError(f"{path}:{lineno}: 'negatives' must be a non-empty list of passages")
            data.train.append(TrainingGroup(str(record["query"]), str(record["positive"]),
                                            tuple(str(n) for n in negatives), "jsonl"))
    source: dict[str, Any] = {"collection": root.name, "path": str(root), "jsonl_groups": len(data.train)}
    listed = root / "SOURCES.json" if root.is_dir() else None
    if listed is not None and listed.is_file():  # written by scripts/make_training_data.py
        source["made_from"] = [{k: v for k, v in src.items() if k != "licence"}
                               for src in json.loads(listed.read_text(encoding="utf-8"))]
    data.sources.append(source)
    return data
