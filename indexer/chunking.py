"""Split documents into overlapping windows of tokens.

Sizes count tokens of the embedder's own tokenizer, so a chunk of ``size``
tokens fits the model exactly. Chunk text is cut from the original string at
token boundaries (character offsets from the fast tokenizer), so nothing is
re-detokenized.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.types import Chunk, Document

# Tokens reserved for the model's special tokens ([CLS]/[SEP] or <s>/</s>).
SPECIAL_TOKENS = 2


def chunk_documents(
    documents: Sequence[Document],
    tokenizer,
    size: int | None,
    overlap: int,
    max_length: int,
    enabled: bool = True,
    batch_size: int = 256,
) -> Iterator[Chunk]:
    """Yield the chunks of each document in order.

    Args:
        documents: what to split.
        tokenizer: a Hugging Face fast tokenizer (offsets are needed).
        size: tokens per chunk; None = ``max_length`` minus special tokens.
        overlap: tokens shared by consecutive chunks (< size).
        max_length: the embedder's maximum input length, special tokens included.
        enabled: False = one chunk per document, its whole ``title + " " + text``
            (the model truncates it at ``max_length``).
    """
    if not enabled:
        for doc in documents:
            text = doc.full_text
            yield _chunk(doc, 0, text, 0, len(text))
        return
    room = max(max_length - SPECIAL_TOKENS, 1)
    window = room if size is None else min(size, room)
    step = max(window - overlap, 1)
    for start in range(0, len(documents), batch_size):
        batch = documents[start : start + batch_size]
        texts = [doc.full_text for doc in batch]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for doc, text, offsets in zip(batch, texts, encoded["offset_mapping"]):
            yield from _windows(doc, text, offsets, window, step)


def _windows(doc: Document, text: str, offsets: Sequence[tuple[int, int]], window: int, step: int) -> Iterator[Chunk]:
    offsets = [o for o in offsets if o[1] > o[0]]
    if len(offsets) <= window:
        yield _chunk(doc, 0, text.strip(), 0, len(text))
        return
    position = 0
    for first in range(0, len(offsets), step):
        last = min(first + window, len(offsets)) - 1
        begin, end = offsets[first][0], offsets[last][1]
        yield _chunk(doc, position, text[begin:end], begin, end)
        position += 1
        if last == len(offsets) - 1:
            return


def _chunk(doc: Document, position: int, text: str, start: int, end: int) -> Chunk:
    return Chunk(
        chunk_id=f"{doc.doc_id}#{position}",
        doc_id=doc.doc_id,
        text=text,
        source=doc.source,
        position=position,
        start=start,
        end=end,
        title=doc.title,
    )
