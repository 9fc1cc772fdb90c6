"""Read a labelled test collection in BEIR layout: corpus, queries and the qrels of one split.

Layout::

    DIR/corpus.jsonl[.gz]     {"_id", "title", "text"} per line
    DIR/queries.jsonl         {"_id", "text"} per line (may hold several splits' queries)
    DIR/qrels/<split>.tsv     query-id <tab> corpus-id <tab> score, with a header line

Only queries judged in the split are evaluated; a judgement with score <= 0
marks a document as not relevant and is dropped, as BEIR does.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import CorpusError

logger = logging.getLogger(__name__)

CORPUS_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")


@dataclass(frozen=True)
class Collection:
    """The queries and relevance judgements of one split of a collection.

    ``queries`` maps query id to text, in file order, for the judged queries only;
    ``qrels`` maps query id to ``{doc id: graded relevance > 0}``.
    """

    name: str
    root: Path
    split: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    subset_of: int | None = None  # the split's judged queries before :meth:`sample`, if sampled

    def sample(self, n: int, seed: int = 42) -> Collection:
        """A seeded random subset of ``n`` judged queries (file order kept); all of them when ``n`` covers them."""
        ids = list(self.queries)
        if n >= len(ids):
            return self
        keep = set(random.Random(seed).sample(ids, n))
        ids = [q for q in ids if q in keep]
        return replace(self, queries={q: self.queries[q] for q in ids}, qrels={q: self.qrels[q] for q in ids},
                       subset_of=len(self.queries))

    def select(self, query_ids: Iterable[str]) -> Collection:
        """Only the judged queries among ``query_ids`` (file order kept), e.g. a dev split carved from train."""
        keep = set(query_ids)
        ids = [q for q in self.queries if q in keep]
        return replace(self, queries={q: self.queries[q] for q in ids}, qrels={q: self.qrels[q] for q in ids},
                       subset_of=len(self.queries))


def load_collection(root: str | Path, split: str = "test") -> Collection:
    """Read ``root`` (BEIR layout) and keep the queries judged in ``split``.

    Raises:
        CorpusError: a file is missing or unreadable, or the split judges no query.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"collection folder {root} does not exist")
    corpus = next((root / name for name in CORPUS_NAMES if (root / name).is_file()), None)
    if corpus is None:
        raise CorpusError(f"{root} has no corpus.jsonl or corpus.jsonl.gz (BEIR layout expected)")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise CorpusError(
            f"{root} has no qrels for split {split!r} ({qrels_path} missing); "
            f"splits found: {', '.join(splits) or 'none'}"
        )
    qrels = read_qrels(qrels_path)
    all_queries = read_queries(root / "queries.jsonl")
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        logger.warning("%d judged queries of %s are not in queries.jsonl and are skipped (e.g. %s)",
                       len(missing), qrels_path, missing[0])
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    if not queries:
        raise CorpusError(f"no query of {root / 'queries.jsonl'} is judged in {qrels_path}")
    return Collection(root.name, root, split, corpus, queries, {qid: qrels[qid] for qid in queries})


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: score}}`` for scores > 0; the header line is optional."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            for lineno, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if not row or not "".join(row).strip():
                    continue
                if lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                    continue
                if len(row) < 3:
                    raise CorpusError(f"{path}:{lineno}: expected query-id, corpus-id, score; got {row!r}")
                qid, doc_id, score = row[0].strip(), row[1].strip(), row[2].strip()
                try:
                    value = int(float(score))
                except ValueError:
                    raise CorpusError(f"{path}:{lineno}: score {score!r} is not a number") from None
                if value > 0:
                    qrels.setdefault(qid, {})[doc_id] = value
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read qrels {path}: {exc}") from None
    if not qrels:
        raise CorpusError(f"{path} holds no relevant (score > 0) judgement")
    return qrels


def read_queries(path: Path) -> dict[str, str]:
    """``{query id: text}`` from a BEIR ``queries.jsonl``."""
    queries: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    qid, text = str(record["_id"]), record["text"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise CorpusError(f"{path}:{lineno}: expected {{\"_id\", \"text\"}} JSON ({exc})") from None
                if isinstance(text, str) and text.strip():
                    queries[qid] = text.strip()
    except FileNotFoundError:
        raise CorpusError(f"{path} is missing (BEIR layout expects queries.jsonl)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read queries {path}: {exc}") from None
    return queries
