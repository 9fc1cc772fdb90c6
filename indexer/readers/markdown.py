"""Markdown (``.md``, ``.markdown``): one section per heading, with its heading path.

A leading ``# Title`` (the only level-1 heading) is the document's title and is left out of
the heading paths; otherwise every level counts. Headings are found by markdown-it (so a
``#`` line inside a code fence is not a heading, and setext headings are). YAML front matter
(``---`` ... ``---`` at the top) becomes the document's metadata; its ``title`` the title.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import yaml

from indexer.readers.base import FileInput, SkipFile, decode_text
from pipeline.types import Document, Section, document_from_sections

NAME = "markdown"
SUFFIXES = (".md", ".markdown")
VERSION = 1
LIBRARY = "markdown-it-py"

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)


def read(file: FileInput) -> Iterator[Document]:
    text = decode_text(file.read_bytes())
    metadata, text = _front_matter(text)
    if not text.strip() and not metadata.get("title"):
        raise SkipFile("empty file")
    yield parse(text, doc_id=file.rel, source=file.rel, metadata=metadata)


def parse(text: str, *, doc_id: str, source: str, metadata: dict | None = None) -> Document:
    """A Markdown string as a document with one section per heading."""
    from markdown_it import MarkdownIt

    metadata = {"format": NAME, **(metadata or {})}
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    heads: list[tuple[int, int, int, str]] = []  # (first line, end line, level, text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            heads.append((token.map[0], token.map[1], int(token.tag[1]), tokens[i + 1].content.strip()))
    title = str(metadata.pop("title", "") or "").strip()
    top = [h for h in heads if h[2] == 1]
    title_line = None
    if not title and len(top) == 1 and not "".join(lines[: top[0][0]]).strip():
        title, title_line = top[0][3], top[0]
    sections: list[Section] = []
    path: list[tuple[int, str]] = []  # (level, heading)

    def add(first: int, last: int, heading: str | None) -> None:
        body = "\n".join(lines[first:last]).strip()
        body = f"{heading}\n{body}".strip() if heading else body
        if body:
            sections.append(Section(body, None, tuple(h for _, h in path)))

    add(0, heads[0][0] if heads else len(lines), None)
    for n, head in enumerate(heads):
        start, end, level, heading = head
        stop = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        if head is title_line:
            add(end, stop, None)
            continue
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, heading))
        add(end, stop, heading)
    return document_from_sections(doc_id, sections, title=title, source=source, metadata=metadata)


def _front_matter(text: str) -> tuple[dict, str]:
    """(metadata, rest) when the text starts with YAML front matter that is a mapping; else ({}, text)."""
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    return {str(k): _plain(v) for k, v in data.items()}, text[match.end():]


def _plain(value):
    """A front-matter value as JSON-ready data (dates and other YAML types as strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
