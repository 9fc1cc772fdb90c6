"""Citations in an answer: parse the model's ``[n]`` markers, check them, attribute the rest.

Small models cite badly or not at all, so the model's markers are not taken on trust:

1. :func:`clean_citations` finds every ``[n]`` (also ``[1, 3]``); a number outside ``1..n``
   is removed from the text and reported as dropped.
2. :func:`split_sentences` cuts the answer into sentences; markers right after a sentence's
   full stop belong to that sentence.
3. :func:`attribute` embeds each sentence and each passage with the pipeline's embedder.
   A model's citation is kept and marked ``supported`` when the sentence is at least
   ``threshold`` similar to the passage. A sentence with no supported citation is
   attributed to its most similar passage when that passage reaches the threshold
   (``origin="attributed"``). Without an embedder the model's citations are kept as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.types import Citation

MARKER = re.compile(r"\[\s*(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\s*\]")
# A sentence: text up to . ! ? followed by a space, the end or a marker (so "2.5" and "e.g.x" stay whole, and
# a list's "1." after a lone digit does not end one), or up to Chinese/Japanese full stops (no space follows
# them), or a blank line; then any markers right after it.
SENTENCE = re.compile(
    r".+?(?:(?<!\b\d)[.!?]+(?=\s|$|\[)|[。！？]+|\n\s*\n|$)(?:\s*\[\s*\d{1,4}(?:\s*[,;]\s*\d{1,4})*\s*\])*",
    re.S,
)
WORD = re.compile(r"\w", re.UNICODE)


def numbers_in(text: str) -> list[int]:
    """The citation numbers written in ``text``, in order (duplicates kept)."""
    return [int(n) for m in MARKER.finditer(text) for n in re.split(r"\s*[,;]\s*", m.group(1))]


def clean_citations(text: str, n_passages: int) -> tuple[str, tuple[int, ...]]:
    """Remove the numbers outside ``1..n_passages`` from the markers of ``text``.

    Returns:
        (the text without them, the dropped numbers in order of appearance).

    Example:
        >>> clean_citations("Bone pain [1][7]. Fatigue [2, 9].", 3)
        ('Bone pain [1]. Fatigue [2].', (7, 9))
    """
    dropped: list[int] = []

    def keep(match: re.Match) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_passages]
        dropped.extend(n for n in numbers if not 1 <= n <= n_passages)
        return "[" + ", ".join(str(n) for n in valid) + "]" if valid else ""

    cleaned = MARKER.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned) if dropped else cleaned
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip(), tuple(dropped)


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences, each stripped; markers after a full stop stay with its sentence.

    Example:
        >>> split_sentences("It hurts. [1] Sunlight helps [2]. 维生素D很重要。缺乏会导致骨痛。")
        ['It hurts. [1]', 'Sunlight helps [2].', '维生素D很重要。', '缺乏会导致骨痛。']
    """
    sentences = [m.group(0).strip() for m in SENTENCE.finditer(text)]
    merged: list[str] = []
    for sentence in sentences:
        if not sentence:
            continue
        if merged and not WORD.search(MARKER.sub("", sentence)):
            merged[-1] = f"{merged[-1]} {sentence}"  # a line of markers alone belongs to the sentence before
        else:
            merged.append(sentence)
    return merged


def attribute(
    sentences: Sequence[str],
    passages: Sequence[str],
    embedder: Any | None,
    threshold: float,
) -> tuple[Citation, ...]:
    """The citations of each sentence: the model's (checked) and, where it has none supported, one attributed.

    Args:
        sentences: the answer's sentences (markers still in them; they are removed before embedding).
        passages: the texts numbered ``[1]..[n]`` in the prompt.
        embedder: the pipeline's embedder (``encode_queries``/``encode_documents``), or None to keep
            the model's citations unchecked.
        threshold: the cosine a sentence needs with a passage for the citation to count as supported.
    """
    model_cited = [list(dict.fromkeys(n for n in numbers_in(s) if 1 <= n <= len(passages))) for s in sentences]
    if embedder is None or not passages or not sentences:
        return tuple(Citation(n, i, "model") for i, numbers in enumerate(model_cited) for n in numbers)
    plain = [" ".join(MARKER.sub(" ", s).split()) for s in sentences]
    similarity = similarities(embedder, plain, passages)
    citations: list[Citation] = []
    for i, numbers in enumerate(model_cited):
        row = similarity[i]
        checked = [Citation(n, i, "model", float(row[n - 1]), bool(row[n - 1] >= threshold)) for n in numbers]
        citations.extend(checked)
        if any(c.supported for c in checked) or not WORD.search(plain[i]):
            continue
        best = int(np.argmax(row))
        if row[best] >= threshold:
            citations.append(Citation(best + 1, i, "attributed", float(row[best]), True))
    return tuple(citations)


def similarities(embedder: Any, sentences: Sequence[str], passages: Sequence[str]) -> np.ndarray:
    """Cosine of each sentence (as a query) with each passage (as a document): ``(len(sentences), len(passages))``."""
    queries = np.asarray(embedder.encode_queries(list(sentences)), dtype=np.float32)
    documents = np.asarray(embedder.encode_documents(list(passages)), dtype=np.float32)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    documents /= np.maximum(np.linalg.norm(documents, axis=1, keepdims=True), 1e-12)
    return queries @ documents.T
