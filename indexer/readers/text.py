"""Plain text (``.txt``): the whole file is one document, without structure."""

from __future__ import annotations

from collections.abc import Iterator

from indexer.readers.base import FileInput, SkipFile, decode_text
from pipeline.types import Document

NAME = "text"
SUFFIXES = (".txt",)
VERSION = 1
LIBRARY = None


def read(file: FileInput) -> Iterator[Document]:
    text = decode_text(file.read_bytes()).strip()
    if not text:  # only a byte-order mark or Unicode spaces
        raise SkipFile("empty file")
    yield Document(doc_id=file.rel, title="", text=text, source=file.rel, metadata={"format": NAME})
