"""Lexical first stage (``retriever.type: bm25``) on bm25s, with a tokenizer for English and Chinese.

The BM25 index is built from the index's chunk store when the stage first
searches (a few seconds for thousands of chunks), so it always covers exactly
the chunks the vector index holds, and it is kept on the loaded index bundle so
that a ``bm25`` and a ``hybrid`` stage over the same index share it.

Tokenization, the part that decides most of BM25's quality:

* Latin script and digits: lowercased, words of two or more characters
  (``(?u)\\b\\w\\w+\\b``), English stopwords removed, Snowball-stemmed; this is how
  bm25s reproduces the BEIR BM25 numbers.
* Chinese (Han characters): segmented into words with jieba (``chinese: jieba``)
  or cut into overlapping character bigrams (``chinese: bigram``, no dictionary).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from pipeline.errors import MissingDependencyError
from pipeline.filters import Filter
from pipeline.params import StageParams
from pipeline.retrievers.hits import hits_from_rows, row_ids
from pipeline.types import Hit

logger = logging.getLogger(__name__)

# CJK unified ideographs (+ extension A and compatibility ideographs).
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"(?u)\b\w\w+\b")


class LexicalParams(StageParams):
    """BM25 scoring and tokenization settings (shared by ``bm25`` and ``hybrid``)."""

    k1: PositiveFloat = 1.2
    b: NonNegativeFloat = 0.75
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stemmer: Literal["english"] | None = "english"
    stopwords: Literal["en"] | None = "en"
    chinese: Literal["jieba", "bigram"] = "jieba"


class Tokenizer:
    """Text -> list of index terms; see the module docstring for the rules.

    Example:
        >>> Tokenizer(LexicalParams(chinese="bigram")).tokenize("Vitamins of 维生素D")
        ['vitamin', '维生', '生素']
    """

    def __init__(self, params: LexicalParams) -> None:
        self.params = params
        self._stopwords: frozenset[str] = frozenset()
        if params.stopwords == "en":
            from bm25s.stopwords import STOPWORDS_EN

            self._stopwords = frozenset(STOPWORDS_EN)

    @cached_property
    def _stem(self):
        if self.params.stemmer is None:
            return None
        try:
            import Stemmer
        except ImportError:
            raise MissingDependencyError("PyStemmer", "eval", "the BM25 stemmer (bm25.stemmer: english)") from None
        return Stemmer.Stemmer(self.params.stemmer).stemWord

    @cached_property
    def _segment(self):
        if self.params.chinese == "bigram":
            return _bigrams
        try:
            import jieba
        except ImportError:
            raise MissingDependencyError("jieba", "eval", "Chinese BM25 tokenization (bm25.chinese: jieba)") from None
        if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):
            jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading to stderr at DEBUG
        segmenter = jieba.Tokenizer()
        return lambda run: [word for word in segmenter.lcut(run, HMM=True) if word.strip()]

    def tokenize(self, text: str) -> list[str]:
        """The terms of one text, in order."""
        text = text.lower()
        terms: list[str] = []
        last = 0
        for match in _HAN.finditer(text):
            terms.extend(self._words(text[last : match.start()]))
            terms.extend(self._segment(match.group()))
            last = match.end()
        terms.extend(self._words(text[last:]))
        return terms

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.tokenize(text) for text in texts]

    def _words(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text) if w not in self._stopwords]
        stem = self._stem
        return [stem(w) for w in words] if stem is not None else words


def _bigrams(run: str) -> list[str]:
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


class LexicalIndex:
    """A bm25s index over every chunk of an index bundle, row i = chunk row i."""

    def __init__(self, params: LexicalParams, texts: Sequence[str]) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.NOTSET)  # bm25s forces DEBUG on import; follow ours

        self.tokenizer = Tokenizer(params)
        start = time.perf_counter()
        tokens = self.tokenizer.tokenize_many(texts)
        self.size = len(tokens)
        self._bm25 = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
        if self.size:
            self._bm25.index(tokens, show_progress=False)
        logger.info("BM25 index over %d chunks built in %.1fs", self.size, time.perf_counter() - start)

    @classmethod
    def of(cls, bundle, params: LexicalParams) -> LexicalIndex:
        """The lexical index of a loaded :class:`IndexBundle`, built on first request and kept on it."""
        settings = {name: getattr(params, name) for name in LexicalParams.model_fields}
        key = ("bm25", tuple(sorted(settings.items())))
        if key not in bundle.derived:
            bundle.derived[key] = cls(params, bundle.chunks.texts())
        return bundle.derived[key]

    def search(self, query: str, top_k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the best ``top_k`` chunks that share a term with the query (among ``rows``)."""
        terms = self.tokenizer.tokenize(query)
        k = min(top_k, self.size if rows is None else len(rows))
        if not terms or k == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        mask = None
        if rows is not None:  # chunks outside the filter score 0, and 0 is not a match
            mask = np.zeros(self.size, dtype=np.float32)
            mask[rows] = 1.0
        ids, scores = self._bm25.retrieve([terms], k=k, show_progress=False, n_threads=1, weight_mask=mask)
        ids, scores = ids[0], scores[0]
        keep = scores > 0  # chunks with no query term get 0 in arbitrary order: not a match
        return scores[keep], ids[keep]


class BM25Retriever:
    """Okapi BM25 top-k over the chunks of the index (no embedding)."""

    class Params(LexicalParams):
        top_k: PositiveInt = 50

    requires = ("index",)  # no embedder: a BM25 pipeline never loads the embedding model

    def __init__(self, params: Params, *, index) -> None:
        self.params = params
        self.index = index  # an IndexBundle; its chunk store is what gets indexed

    @property
    def lexical(self) -> LexicalIndex:
        return LexicalIndex.of(self.index, self.params)

    def load(self) -> BM25Retriever:
        """Build (or fetch) the BM25 index now rather than on the first query."""
        _ = self.lexical
        return self

    def search(
        self, queries: Sequence[str], top_k: int | None = None, timings: dict[str, float] | None = None,
        *, filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """One ranked list per query: at most ``top_k`` chunks, only those sharing a term with it.

        ``filter`` masks out the chunks it does not match before the top ``top_k`` are taken.
        When ``timings`` is given, seconds spent are added to its ``bm25`` entry.
        """
        top_k = top_k or self.params.top_k
        lexical = self.lexical
        allowed = self.index.chunks.matching_rows(filter) if filter else None
        start = time.perf_counter()
        rows = [lexical.search(query, top_k, allowed) for query in queries]
        found = self.index.chunks.get(row_ids(ids for _, ids in rows))
        results = [hits_from_rows(zip(scores, ids), found) for scores, ids in rows]
        if timings is not None:
            timings["bm25"] = timings.get("bm25", 0.0) + time.perf_counter() - start
        return results
