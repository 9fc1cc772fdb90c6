"""Training groups made from documents and from labelled pairs, to teach a reranker the keyword traps.

Three sources, each written as ``{"query", "positive", "negatives", "origin"}`` JSONL that
``scripts/train_reranker.py --data DIR`` reads:

* **sections**: a structured document's heading -> the text under it (HTML and Markdown through
  the indexer's own readers; e.g. Debian's ``python3.11-doc``). Negatives: the same document's other
  sections (same subject, other aspect) and the sections of other documents that share the most
  words with the heading (BM25).
* **man pages**: a manual page's one-line description (its NAME section) -> its DESCRIPTION
  section, for any language's manual pages (e.g. Debian's ``manpages-zh``, Chinese). Negatives:
  other pages' descriptions that share the most words or characters with it.
* **labelled**: a BEIR collection's train split (judged pairs; dev queries held back as
  :func:`training.data.dev_query_ids` holds them), with BM25 negatives that share the query's words.

Every group may also get a **substitution negative**: the positive with one key term it shares with
the query (a number, a name, a rare word; in Chinese a shared run of Han characters) replaced by a
term of the same kind from another passage, so that it reads almost like the answer but is about
another subject (vitamin D -> vitamin C, 1989 -> 1961). No test split is ever read.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import CorpusError, InputError

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*|\d+(?:\.\d+)?")
_HAN = re.compile(r"[\u3400-\u9fff]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from has have how in into is it its of on or that the this to was "
    "what when where which who why will with you your not no more than other also use used using these those there "
    "their they been being such may between about after before over under all any each".split()
)
_ZH_QUESTION = frozenset("什么 哪里 哪个 哪些 多少 为什么 怎么 怎样 如何 是否 几 谁 吗 呢 的 是 在 了 和 与 有".split())
GENERIC_HEADINGS = frozenset(
    "example examples note notes see also introduction overview summary contents index footnotes references "
    "changes changelog description details usage options return value returns parameters arguments".split()
)


@dataclass(frozen=True)
class Group:
    query: str
    positive: str
    negatives: tuple[str, ...]
    origin: str

    def to_json(self) -> str:
        return json.dumps({"query": self.query, "positive": self.positive, "negatives": list(self.negatives),
                           "origin": self.origin}, ensure_ascii=False)


def tokens(text: str) -> list[str]:
    """Lower-cased words without stop words, and Han characters as overlapping bigrams (and single
    characters), for BM25 mining in any mix of English and Chinese."""
    out = [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP]
    for run in _HAN.findall(text):
        out.extend(run)
        out.extend(run[i:i + 2] for i in range(len(run) - 1))
    return out


def clip_words(text: str, limit: int) -> str:
    """The first ``limit`` words (or, for Han text, about ``limit * 1.5`` characters) of ``text``."""
    if _HAN.search(text) and len(text.split()) < limit // 4:
        return text[: int(limit * 1.5)]
    words = text.split()
    return " ".join(words[:limit])


class Miner:
    """BM25 over a list of passages: the passages that share the most words with a query."""

    def __init__(self, passages: Sequence[str]) -> None:
        try:
            import bm25s
        except ImportError as exc:
            raise InputError("mining negatives needs bm25s: pip install -e '.[eval]'") from exc
        self.passages = list(passages)
        self._bm25 = bm25s.BM25()
        self._bm25.index([tokens(p) or ["_"] for p in self.passages], show_progress=False)

    def top(self, query: str, k: int) -> list[int]:
        """Indices of the ``k`` best passages for ``query`` (fewer when fewer share a word)."""
        import numpy as np

        scores = self._bm25.get_scores(tokens(query) or ["_"])
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        return [int(i) for i in best[np.argsort(-scores[best])] if scores[i] > 0]


# --- substitution negatives ---------------------------------------------------------------------


def key_terms(query: str, passage: str) -> list[str]:
    """Terms of ``query`` that ``passage`` also holds and that carry its subject: numbers, names,
    rarer words (longest first); for Han text, the longest shared runs of two to four characters."""
    terms: list[str] = []
    lowered = passage.lower()
    words = {w for w in _WORD.findall(query) if w.lower() not in _STOP}
    for w in sorted(words, key=lambda w: (not w[0].isdigit(), not w[0].isupper(), -len(w))):
        if (w[0].isdigit() or len(w) >= 4) and re.search(rf"(?<![\w]){re.escape(w.lower())}(?![\w])", lowered):
            terms.append(w)
    for run in _HAN.findall(query):
        for size in (4, 3, 2):
            for i in range(len(run) - size + 1):
                piece = run[i:i + size]
                if piece in passage and piece not in _ZH_QUESTION and not any(piece in t for t in terms):
                    terms.append(piece)
    return terms


def substitute(query: str, positive: str, donors: Sequence[str], rng: random.Random) -> str | None:
    """``positive`` with one key term it shares with ``query`` replaced by a same-kind term of a donor
    passage (a number by another number, a word by a word, Han characters by as many others), or
    None when there is no such term."""
    terms = key_terms(query, positive)
    if not terms:
        return None
    term = terms[0] if rng.random() < 0.6 else rng.choice(terms)
    replacement = _replacement(term, donors, rng)
    if not replacement or replacement.lower() == term.lower():
        return None
    if _HAN.fullmatch(term):
        return positive.replace(term, replacement)
    pattern = re.compile(rf"(?<![\w]){re.escape(term)}(?![\w])", re.IGNORECASE)
    return pattern.sub(lambda m: _same_case(replacement, m.group(0)), positive)


def _replacement(term: str, donors: Sequence[str], rng: random.Random) -> str | None:
    for _ in range(20):
        donor = rng.choice(donors)
        if _HAN.fullmatch(term):
            runs = [r for r in _HAN.findall(donor) if len(r) >= len(term)]
            if runs:
                run = rng.choice(runs)
                start = rng.randrange(len(run) - len(term) + 1)
                piece = run[start:start + len(term)]
                if piece != term:
                    return piece
            continue
        if term[0].isdigit():
            numbers = [w for w in _WORD.findall(donor) if w[0].isdigit() and w != term and len(w) == len(term)]
            if numbers:
                return rng.choice(numbers)
            value = int(float(term)) if term.replace(".", "", 1).isdigit() else 0
            return str(value + rng.choice([-3, -2, -1, 1, 2, 5, 10])) if value else None
        words = [w for w in _WORD.findall(donor) if len(w) >= 4 and w.lower() not in _STOP and not w[0].isdigit()
                 and w[0].isupper() == term[0].isupper() and w.lower() != term.lower()]
        if words:
            return rng.choice(words)
    return None


def _same_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower() if word[1:].islower() or not word[1:] else word


# --- sources -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    doc: str      # which document it comes from
    query: str    # what it answers: a heading, a page's one-line description, a judged query
    text: str


def html_sections(root: Path, *, min_words: int = 25, max_words: int = 110) -> list[Passage]:
    """Heading -> text pairs from the HTML and Markdown files under ``root``, read by the indexer's readers."""
    from indexer.readers import reader_for
    from indexer.readers.base import FileInput, SkipFile

    found: list[Passage] = []
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".html", ".htm", ".md") and p.is_file())
    if not files:
        raise CorpusError(f"{root}: no HTML or Markdown files to take sections from")
    for path in files:
        reader = reader_for(path.name)
        if reader is None:
            continue
        try:
            documents = list(reader.read(FileInput(path, str(path.relative_to(root)), 8 * 2**20)))
        except SkipFile:
            continue
        for document in documents:
            for section in document.sections:
                if not section.headings:
                    continue
                heading = section.headings[-1].replace("¶", "").strip()
                body = section.text
                if body.startswith(section.headings[-1]):
                    body = body[len(section.headings[-1]):]
                body = body.replace("¶", "").strip()
                if len(heading.split()) < 2 or heading.lower().strip(" .:") in GENERIC_HEADINGS:
                    continue
                if len(body.split()) < min_words:
                    continue
                found.append(Passage(document.doc_id, heading, clip_words(body, max_words)))
    return found


_TROFF_ESCAPES = re.compile(r"\\f[A-Z0-9PR]|\\f\(..|\\[&/,^|]|\\\(..|\\\*.|\\s[-+]?\d")


def man_pages(root: Path, *, min_chars: int = 40, max_chars: int = 300) -> list[Passage]:
    """One-line description (NAME) -> DESCRIPTION text of the manual pages (``*.gz`` troff) under ``root``."""
    found: list[Passage] = []
    for path in sorted(Path(root).rglob("*.gz")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        sections = _man_sections(source)
        if len(sections) < 2:
            continue
        name = sections[0][1]
        if "-" not in name:
            continue
        description = name.split("-", 1)[1].strip(" -")
        body = next((text for _, text in sections[1:] if len(text) >= min_chars and not text.startswith(name[:3])), "")
        if len(description) >= 2 and len(body) >= min_chars:
            found.append(Passage(path.name, description, body[:max_chars]))
    return found


def _man_sections(source: str) -> list[tuple[str, str]]:
    sections: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith(".SH"):
            sections.append((line[3:].strip().strip('"'), []))
        elif sections and not line.startswith((".", "'")):
            text = _TROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\").strip()
            if text:
                sections[-1][1].append(text)
        elif sections and line.startswith((".B ", ".I ", ".BR ", ".IR ", ".BI ", ".IB ", ".RB ")):
            text = _TROFF_ESCAPES.sub("", line.split(" ", 1)[1]).replace('"', "").replace("\\-", "-").strip()
            if text:
                sections[-1][1].append(text)
    return [(title, " ".join(lines)) for title, lines in sections if lines]


def labelled_passages(root: Path, split: str, held_back: int, seed: int) -> tuple[list[Passage], dict[str, str]]:
    """Judged (query, passage) pairs of a BEIR collection's ``split`` minus the ``held_back`` dev
    queries, and the whole corpus (id -> text) to mine negatives from."""
    from evaluation.collection import load_collection
    from training.data import dev_query_ids, document_text, read_jsonl

    if split == "test":
        raise InputError("training data from a test split is not allowed")
    collection = load_collection(root, split)
    held = set(dev_query_ids(collection, held_back, seed))
    corpus = {d["_id"]: document_text(d.get("title") or "", d.get("text") or "")
              for d in read_jsonl(collection.corpus_path)}
    found = [Passage(d, collection.queries[q], corpus[d]) for q in collection.queries if q not in held
             for d in sorted(collection.qrels[q]) if d in corpus]
    return found, corpus



# --- groups --------------------------------------------------------------------------------------


def make_groups(
    passages: Sequence[Passage],
    origin: str,
    *,
    pool: Sequence[str] | None = None,
    negatives: int = 7,
    siblings: int = 3,
    substitution_share: float = 0.5,
    mine_top_k: int = 30,
    max_groups: int | None = None,
    max_words: int = 110,
    seed: int = 42,
) -> Iterator[Group]:
    """Groups of (query, positive, negatives): up to ``siblings`` passages of the same document
    (same subject, other aspect), the rest mined by BM25 from ``pool`` (default: the passages' own
    texts), never a passage that answers the same query; for ``substitution_share`` of the groups
    one negative is the positive with a key term substituted."""
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    if max_groups is not None:
        order = order[:max_groups]
    texts = list(pool) if pool is not None else [p.text for p in passages]
    miner = Miner(texts)
    by_doc: dict[str, list[int]] = {}
    for i, p in enumerate(passages):
        by_doc.setdefault(p.doc, []).append(i)
    answers: dict[str, set[str]] = {}
    for p in passages:
        answers.setdefault(p.query, set()).add(p.text)
    made = 0
    for i in order:
        p = passages[i]
        positive = clip_words(p.text, max_words)
        own = answers[p.query]
        chosen: list[str] = []
        same_doc = [passages[j].text for j in by_doc[p.doc] if j != i and passages[j].text not in own]
        rng.shuffle(same_doc)
        chosen.extend(clip_words(t, max_words) for t in same_doc[:siblings])
        substituted = None
        if rng.random() < substitution_share:
            substituted = substitute(p.query, positive, texts, rng)
        want = negatives - len(chosen) - (1 if substituted else 0)
        mined = [texts[j] for j in miner.top(p.query, mine_top_k) if texts[j] not in own and texts[j] != p.text]
        rng.shuffle(mined)
        for text in mined:
            if want <= 0:
                break
            clipped = clip_words(text, max_words)
            if clipped not in chosen:
                chosen.append(clipped)
                want -= 1
        if substituted:
            chosen.insert(rng.randrange(len(chosen) + 1), substituted)
        while len(chosen) < negatives and len(texts) > 1:  # a thin pool: fill with random passages
            text = clip_words(rng.choice(texts), max_words)
            if text not in own and text not in chosen:
                chosen.append(text)
        if len(chosen) >= negatives:
            made += 1
            yield Group(p.query, positive, tuple(chosen[:negatives]), origin + ("+sub" if substituted else ""))
    logger.info("%s: %d groups from %d passages", origin, made, len(passages))


def write_groups(groups: Iterable[Group], path: Path) -> Counter:
    """Write ``groups`` as JSONL to ``path`` (atomically); return the count per origin."""
    counts: Counter = Counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for group in groups:
            handle.write(group.to_json() + "\n")
            counts[group.origin] += 1
    tmp.replace(path)
    return counts


def int8_calibration_pairs(folder: Path, count: int = 300, per_group: int = 3, seed: int = 42) -> list[dict]:
    """``count`` (query, passage) pairs from the JSONL groups in ``folder`` (a positive and hard
    negatives of each sampled group, every source in turn), for the int8 export's calibration
    (``calibration_pairs.jsonl`` beside a model; OpenVINO/NNCF reads it)."""
    rng = random.Random(seed)
    sources = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rng.shuffle(rows)
        sources.append(rows)
    pairs: list[dict] = []
    while len(pairs) < count and any(sources):
        for rows in sources:
            if rows and len(pairs) < count:
                group = rows.pop()
                for passage in [group["positive"], *group["negatives"]][:per_group]:
                    pairs.append({"query": group["query"], "passage": passage})
    return pairs[:count]
