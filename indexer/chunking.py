"""Split documents into overlapping windows of tokens.

Sizes count tokens of the embedder's own tokenizer, so a chunk of ``size``
tokens fits the model exactly. Chunk text is cut from the original string at
token boundaries (character offsets from the fast tokenizer), so nothing is
re-detokenized.

A document with ``sections`` (pages of a PDF, heading sections of Markdown, DOCX
or HTML) is chunked along them: consecutive sections are packed into one chunk
while they share the page and the top-level heading and fit the window together;
a section longer than the window is cut into overlapping windows of its own. So a
chunk never straddles a page or a top-level section, and each chunk carries its
page and heading path (the path its sections share).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.types import SECTION_SEPARATOR, Chunk, Document, Section

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
            pages = {s.page for s in doc.sections}
            yield _chunk(doc, 0, text, 0, len(text), page=pages.pop() if len(pages) == 1 else None)
        return
    room = max(max_length - SPECIAL_TOKENS, 1)
    window = room if size is None else min(size, room)
    step = max(window - overlap, 1)
    for start in range(0, len(documents), batch_size):
        batch = documents[start : start + batch_size]
        texts = [doc.full_text for doc in batch]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for doc, text, offsets in zip(batch, texts, encoded["offset_mapping"]):
            if doc.sections:
                yield from _structured(doc, text, offsets, window, step)
            else:
                yield from _windows(doc, text, offsets, window, step)


def _structured(
    doc: Document, text: str, offsets: Sequence[tuple[int, int]], window: int, step: int
) -> Iterator[Chunk]:
    """Chunks that follow the document's sections (see the module docstring)."""
    offsets = [o for o in offsets if o[1] > o[0]]
    # Each section's character span in full_text; the title (before the first section) belongs to the first.
    spans: list[tuple[int, int]] = []
    cursor = len(doc.title) + 1 if doc.title else 0
    for section in doc.sections:
        spans.append((cursor, cursor + len(section.text)))
        cursor += len(section.text) + len(SECTION_SEPARATOR)
    tokens: list[list[tuple[int, int]]] = [[] for _ in doc.sections]
    index = 0
    for offset in offsets:
        while index + 1 < len(spans) and offset[0] >= spans[index + 1][0]:
            index += 1
        tokens[index].append(offset)
    position = 0
    block: list[int] = []  # indices of the sections packed into the next chunk

    def emit(members: list[int]) -> Chunk:
        first, last = tokens[members[0]][0][0], tokens[members[-1]][-1][1]
        sections = [doc.sections[i] for i in members]
        return _chunk(doc, position, text[first:last], first, last, page=sections[0].page,
                      headings=_common_path(sections))

    for i, section in enumerate(doc.sections):
        if not tokens[i]:
            continue
        if block and (
            not _same_part(doc.sections[block[0]], section)
            or sum(len(tokens[j]) for j in block) + len(tokens[i]) > window
        ):
            yield emit(block)
            position += 1
            block = []
        if len(tokens[i]) <= window:
            block.append(i)
            continue
        for first in range(0, len(tokens[i]), step):  # a section longer than the window: windows of its own
            last = min(first + window, len(tokens[i])) - 1
            begin, end = tokens[i][first][0], tokens[i][last][1]
            yield _chunk(doc, position, text[begin:end], begin, end, page=section.page, headings=section.headings)
            position += 1
            if last == len(tokens[i]) - 1:
                break
    if block:
        yield emit(block)


def _same_part(a: Section, b: Section) -> bool:
    """Whether two sections may share a chunk: same page and same top-level heading."""
    return a.page == b.page and a.headings[:1] == b.headings[:1]


def _common_path(sections: Sequence[Section]) -> tuple[str, ...]:
    path = sections[0].headings
    for section in sections[1:]:
        n = 0
        while n < min(len(path), len(section.headings)) and path[n] == section.headings[n]:
            n += 1
        path = path[:n]
    return path


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


def _chunk(
    doc: Document, position: int, text: str, start: int, end: int, *, page: int | None = None,
    headings: tuple[str, ...] = (),
) -> Chunk:
    return Chunk(
        chunk_id=f"{doc.doc_id}#{position}",
        doc_id=doc.doc_id,
        text=text,
        source=doc.source,
        position=position,
        start=start,
        end=end,
        title=doc.title,
        page=page,
        headings=headings,
        metadata=doc.metadata,
    )
