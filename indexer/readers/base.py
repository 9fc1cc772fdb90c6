"""What every reader shares: the file it is handed, the skip signal, and text decoding.

A reader module (one per format, listed in :mod:`indexer.readers`) defines ``NAME``,
``SUFFIXES``, ``VERSION`` (bumped when its output changes), ``LIBRARY`` (the pip package
it uses, or None) and ``read(file: FileInput) -> Iterator[Document]``. A problem with the
whole file raises :class:`SkipFile` with the reason; a problem with one record of a
multi-record file (a JSONL line) is recorded with :meth:`FileInput.skip` and reading goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import BrokenDependencyError, MissingDependencyError
from pipeline.store import open_regular
from pipeline.types import Section


class SkipFile(Exception):
    """The file cannot be indexed; the message says why (it becomes the warning and the summary line)."""


@dataclass
class FileInput:
    """One corpus file as a reader sees it: where it is, its name in the corpus, the size limit."""

    path: Path
    rel: str
    max_bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def open(self) -> BinaryIO:
        """The file opened for binary reading (regular files only, links not followed)."""
        return open_regular(self.path, follow_links=False)

    def read_bytes(self) -> bytes:
        """The whole file, read with a bound: over ``max_bytes`` is a :class:`SkipFile`."""
        with self.open() as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(min(self.max_bytes, size + 2**16) + 1)  # read() allocates what it is asked for
        if len(data) > self.max_bytes:
            raise SkipFile(f"{max(size, len(data)) / 2**20:.1f} MB is over the {self.max_bytes / 2**20:g} MB limit "
                           "for one document; split it or raise --max-file-mb")
        return data

    def skip(self, where: str, why: str) -> None:
        """Record one skipped record (a JSONL line) and keep reading."""
        self.skipped.append((where, why))

    @property
    def stem(self) -> str:
        return Path(self.rel).stem


def decode_text(data: bytes) -> str:
    """UTF-8 text of a text file; empty, binary or non-UTF-8 content is a :class:`SkipFile`."""
    if not data.strip():
        raise SkipFile("empty file")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SkipFile(f"binary content in a text file (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkipFile(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def require(module: str, package: str, what: str):
    """Import an optional format library, or raise the error that names the extra to install.

    A library that is installed but fails to import (a dependency of its own missing, as
    ``lxml_html_clean`` for trafilatura under lxml 5.2 and later) is a :class:`BrokenDependencyError`
    carrying the real import error, not a claim that the library is missing.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == module.split(".")[0]:  # the library itself is not installed
            raise MissingDependencyError(package, "formats", what) from None
        raise BrokenDependencyError(package, "formats", what, exc) from exc


def describe_error(exc: BaseException) -> str:
    """A short, one-line description of a parser's exception."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_clean(text: str) -> bool:
    """False for text with a lone surrogate (not encodable as UTF-8) or a NUL character."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(text: str) -> str:
    """Text safe to store: NULs dropped, lone surrogates replaced."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


class SectionBuilder:
    """Paragraphs and headings in reading order -> :class:`Section`s with their heading paths.

    A section is the text under one heading (the heading first); ``heading(level, text)`` closes the
    open section and opens a new one below the last heading of a higher level.
    """

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []  # (level, heading) from the top
        self._body: list[str] = []
        self._heading: str | None = None

    def add(self, text: str) -> None:
        self._body.append(text)

    def heading(self, level: int, text: str) -> None:
        self.close()
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, text))
        self._heading = text

    def close(self) -> None:
        """End the open section (its heading is not repeated in the text that follows)."""
        text = "\n".join(self._body).strip()
        if self._heading and text:
            text = f"{self._heading}\n{text}"
        if text:
            self.sections.append(Section(text, None, tuple(h for _, h in self.path)))
        self._body.clear()
        self._heading = None

    def finish(self) -> list[Section]:
        self.close()
        return self.sections
