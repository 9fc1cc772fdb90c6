"""Read a corpus folder: every file whose extension has a reader in :mod:`indexer.readers`.

Text (``.txt``), Markdown (``.md``, split by headings), BEIR-style JSONL
(``.jsonl``/``.jsonl.gz``, optional ``metadata`` per line), PDF (a section per
page), HTML (main content only) and Word (``.docx``, split by headings). A folder
in BEIR layout (``corpus.jsonl[.gz]`` beside ``qrels/``) is read as that one
corpus file, so its queries are not indexed as documents. Problems that affect
one file or line (encrypted, scanned or corrupt files included) are skipped,
logged and counted; files of other formats are named in ``unsupported_files``;
a corpus with nothing readable is a :class:`CorpusError`.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.readers import READERS, FileInput, SkipFile, reader_for, suffix_of
from pipeline.errors import CorpusError, InputError, MissingDependencyError
from pipeline.store import NotRegularFileError, file_kind
from pipeline.types import Document

logger = logging.getLogger(__name__)

BEIR_CORPUS_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")
MAX_FILE_MB = 32.0
OUTSIDE_LINK = "symlink to a path outside the corpus folder: not followed (use --follow-links to index it)"


@dataclass
class Corpus:
    """Documents read from a corpus path, with what was skipped and why."""

    root: Path
    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    unsupported: int = 0
    links_not_followed: int = 0  # symlinks leaving the corpus folder (also in ``skipped``)
    unsupported_files: list[str] = field(default_factory=list)  # names of files no reader reads
    readers: Counter = field(default_factory=Counter)  # reader name -> documents it read

    @property
    def unsupported_by_extension(self) -> dict[str, int]:
        """How many unsupported files there are per extension (most first)."""
        return dict(Counter(suffix_of(name) for name in self.unsupported_files).most_common())

    def _unsupported(self, rel: str) -> None:
        self.unsupported += 1
        self.unsupported_files.append(rel)


def read_corpus(root: str | Path, max_file_mb: float = MAX_FILE_MB, *, follow_links: bool = False) -> Corpus:
    """Read every supported document under ``root`` (a folder or a single file), in path order.

    A file (PDF, HTML, DOCX, text, Markdown) is one document; one larger than
    ``max_file_mb`` is skipped (split it, or raise the limit). JSONL files are
    streamed line by line; one line (one document) has the same limit. Only regular files are
    opened: FIFOs, sockets and devices are skipped. Symlinks that lead outside
    ``root`` are skipped and counted unless ``follow_links``.

    Raises:
        InputError: ``max_file_mb`` is not a positive finite number.
        CorpusError: ``root`` is missing, or holds no readable document.
    """
    if isinstance(max_file_mb, bool) or not isinstance(max_file_mb, (int, float)) or not (
        math.isfinite(max_file_mb) and max_file_mb > 0
    ):
        raise InputError(f"--max-file-mb must be a positive number of megabytes, got {max_file_mb!r}")
    max_bytes = max(int(min(max_file_mb, 2**30) * 2**20), 1)  # 1 PB and more mean "no limit" alike
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"corpus path {root} does not exist")
    mode = root.stat().st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise CorpusError(f"corpus path {root} is {file_kind(mode)}; give a folder or a regular file")
    corpus = Corpus(root=root, documents=[])
    seen: dict[str, str] = {}
    supported = 0
    for path, rel in _corpus_files(root, corpus, follow_links):
        reader = reader_for(path.name)
        if reader is None:
            corpus._unsupported(rel)
            logger.info("not read (no reader for this format): %s", rel)
            continue
        supported += 1
        for doc in _read_file(reader, path, rel, corpus.skipped, max_bytes):
            if doc.doc_id in seen:
                why = f"duplicate document id {doc.doc_id!r} (first in {seen[doc.doc_id]})"
                corpus.skipped.append((doc.source, why))
                continue
            seen[doc.doc_id] = doc.source
            corpus.documents.append(doc)
            corpus.readers[reader.NAME] += 1
    for where, why in corpus.skipped:
        logger.warning("skipped %s: %s", where, why)
    if corpus.unsupported_files:
        logger.warning("%d files not read, no reader for their format (%s); -v names them",
                       corpus.unsupported, ", ".join(f"{k} {v}" for k, v in corpus.unsupported_by_extension.items()))
    if corpus.links_not_followed:
        logger.warning("%d symlinks lead outside %s and were not followed (--follow-links follows them)",
                       corpus.links_not_followed, root)
    if not corpus.documents:
        if supported == 0 and not corpus.skipped:
            kinds = ", ".join(READERS)
            raise CorpusError(f"no supported files under {root} (looked for {kinds})")
        raise CorpusError(f"no readable document under {root} ({len(corpus.skipped)} skipped: see warnings)")
    return corpus


def read_file(path: Path, rel: str, max_file_mb: float = MAX_FILE_MB) -> tuple[list[Document], list[tuple[str, str]]]:
    """The documents of one file, read as a build reads it, and what was skipped with the reason (never
    raises for the file's content): how an uploaded file is checked before it joins a corpus."""
    reader = reader_for(rel)
    if reader is None:
        return [], [(rel, "no reader for this format")]
    skipped: list[tuple[str, str]] = []
    max_bytes = max(int(min(max_file_mb, 2**30) * 2**20), 1)
    return list(_read_file(reader, path, rel, skipped, max_bytes)), skipped


def _corpus_files(root: Path, corpus: Corpus, follow_links: bool) -> Iterator[tuple[Path, str]]:
    """(path to open, name relative to ``root``) of every file to consider; problems go to ``corpus``."""
    if root.is_file():  # named on purpose, so a link is followed
        yield Path(os.path.realpath(root)), _display(root.name)
        return
    real_root = os.path.realpath(root)
    for name in BEIR_CORPUS_NAMES:
        if (root / name).is_file() and (root / "qrels").is_dir():
            logger.info("%s is a BEIR collection: reading %s only", root, name)
            target = _admit(root / name, name, real_root, follow_links, corpus)
            if target is not None:
                yield target, name
            return
    # Depth first: a folder's files in name order, then its sub-folders. Each real folder is read
    # once, so a link loop ends; links are followed only inside the corpus folder unless follow_links.
    seen = {real_root}
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as exc:
            corpus.skipped.append((prefix or str(root), f"unreadable folder ({exc.strerror or exc}): not read"))
            continue
        subfolders: list[tuple[Path, str]] = []
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            rel = prefix + _display(name)
            if _display(name) != name:
                corpus.skipped.append((rel, "the name is not valid UTF-8: rename it"))
                continue
            target = _admit(path, rel, real_root, follow_links, corpus)
            if target is None:
                continue
            try:
                mode = target.stat().st_mode
            except OSError as exc:
                corpus.skipped.append((rel, f"unreadable: {exc.strerror or exc}"))
                continue
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):  # FIFO, socket, device: never opened
                if _is_supported(target):
                    corpus.skipped.append((rel, f"{file_kind(mode)}, not a regular file"))
                else:
                    corpus._unsupported(rel)
                continue
            if stat.S_ISDIR(mode):
                real = os.path.realpath(target)
                if real in seen:
                    logger.warning("not following %s: it links back to a folder already read", path)
                    continue
                seen.add(real)
                subfolders.append((target, rel + "/"))
            else:
                yield target, rel
        stack.extend(reversed(subfolders))


def _admit(path: Path, rel: str, real_root: str, follow_links: bool, corpus: Corpus) -> Path | None:
    """The path to read for a folder entry, or None when it is skipped (recorded in ``corpus``)."""
    if not path.is_symlink():
        return path
    real = os.path.realpath(path)
    if not os.path.exists(real):
        if _is_supported(path):
            corpus.skipped.append((rel, f"unreadable: broken symlink to {os.readlink(path)}"))
        return None
    inside = real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    if not inside and not follow_links:
        if os.path.isdir(real) or _is_supported(path):
            corpus.links_not_followed += 1
            corpus.skipped.append((rel, OUTSIDE_LINK))
        else:
            corpus._unsupported(rel)
        return None
    return Path(real)


def _display(name: str) -> str:
    """A printable form of a file name that may not be valid UTF-8 (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_supported(path: Path) -> bool:
    return reader_for(path.name) is not None


def _read_file(reader, path: Path, rel: str, skipped: list[tuple[str, str]], max_bytes: int) -> Iterator[Document]:
    """The documents ``reader`` finds in one file; whatever stops it is recorded in ``skipped`` with the reason."""
    file = FileInput(path, rel, max_bytes, skipped)
    try:
        yield from reader.read(file)
    except SkipFile as exc:
        skipped.append((rel, str(exc)))
    except NotRegularFileError as exc:  # a FIFO, socket or device: never read
        skipped.append((rel, str(exc)))
    except MissingDependencyError as exc:
        skipped.append((rel, str(exc)))
    except OSError as exc:
        skipped.append((rel, f"unreadable: {exc.strerror or exc}"))
