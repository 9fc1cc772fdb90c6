"""Read a corpus folder: ``.txt``, ``.md`` and BEIR-style ``.jsonl`` / ``.jsonl.gz``.

A folder in BEIR layout (``corpus.jsonl[.gz]`` beside ``qrels/``) is read as
that one corpus file, so its queries are not indexed as documents. Problems
that affect one file or line are skipped, logged and counted; a corpus with
nothing readable is a :class:`CorpusError`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import CorpusError, InputError
from pipeline.store import NotRegularFileError, file_kind, open_regular
from pipeline.types import Document

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
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


def read_corpus(root: str | Path, max_file_mb: float = MAX_FILE_MB, *, follow_links: bool = False) -> Corpus:
    """Read every supported document under ``root`` (a folder or a single file), in path order.

    A ``.txt``/``.md`` file is one document; one larger than ``max_file_mb``
    is skipped (split it, or raise the limit). JSONL files are streamed line
    by line; one line (one document) has the same limit. Only regular files are
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
        if not _is_supported(path):
            corpus.unsupported += 1
            continue
        supported += 1
        for doc in _read_file(path, rel, corpus.skipped, max_bytes):
            if doc.doc_id in seen:
                corpus.skipped.append((doc.source, f"duplicate document id {doc.doc_id!r} (first in {seen[doc.doc_id]})"))
                continue
            seen[doc.doc_id] = doc.source
            corpus.documents.append(doc)
    for where, why in corpus.skipped:
        logger.warning("skipped %s: %s", where, why)
    if corpus.links_not_followed:
        logger.warning("%d symlinks lead outside %s and were not followed (--follow-links follows them)",
                       corpus.links_not_followed, root)
    if not corpus.documents:
        if supported == 0 and not corpus.skipped:
            kinds = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
            raise CorpusError(f"no supported files under {root} (looked for {kinds})")
        raise CorpusError(f"no readable document under {root} ({len(corpus.skipped)} skipped: see warnings)")
    return corpus


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
                    corpus.unsupported += 1
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
            corpus.unsupported += 1
        return None
    return Path(real)


def _display(name: str) -> str:
    """A printable form of a file name that may not be valid UTF-8 (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)


def _read_file(path: Path, rel: str, skipped: list[tuple[str, str]], max_bytes: int) -> Iterator[Document]:
    name = path.name.lower()
    try:
        if name.endswith(JSONL_SUFFIXES):
            yield from _read_jsonl(path, rel, skipped, max_bytes)
            return
        with open_regular(path, follow_links=False) as handle:
            size = os.fstat(handle.fileno()).st_size
            text = handle.read(min(max_bytes, size + 2**16) + 1)  # read() allocates what it is asked for
        if len(text) > max_bytes:
            skipped.append((rel, f"{max(size, len(text)) / 2**20:.1f} MB is over the {max_bytes / 2**20:g} MB limit "
                                 "for one document; split it or raise --max-file-mb"))
            return
    except NotRegularFileError as exc:  # a FIFO, socket or device: never read
        skipped.append((rel, str(exc)))
        return
    except OSError as exc:
        skipped.append((rel, f"unreadable: {exc.strerror or exc}"))
        return
    if not text.strip():
        skipped.append((rel, "empty file"))
        return
    nul = text.find(b"\x00")
    if nul >= 0:
        skipped.append((rel, f"binary content in a text file (NUL byte at offset {nul})"))
        return
    try:
        content = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        skipped.append((rel, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
        return
    title, body = _split_title(content) if name.endswith((".md", ".markdown")) else ("", content.strip())
    if not (title or body):  # only a byte-order mark or Unicode spaces
        skipped.append((rel, "empty file"))
        return
    yield Document(doc_id=rel, title=title, text=body, source=rel)


def _split_title(markdown: str) -> tuple[str, str]:
    """A leading ``# Heading`` becomes the title; the rest is the text."""
    stripped = markdown.strip()
    first, _, rest = stripped.partition("\n")
    if first.startswith("# "):
        return first[2:].strip(), rest.strip()
    return "", stripped


def _read_jsonl(path: Path, rel: str, skipped: list[tuple[str, str]], max_bytes: int) -> Iterator[Document]:
    """One document per line; a bad line is skipped, a corrupt gzip stream ends the file (lines before it kept)."""
    with open_regular(path, follow_links=False) as raw:
        handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.lower().endswith(".gz") else raw
        lineno = 0
        kept = 0
        while True:
            try:
                line = handle.readline(max_bytes + 1)
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    while (rest := handle.readline(2**20)) and not rest.endswith(b"\n"):
                        pass
                    lineno += 1
                    skipped.append((f"{rel}:{lineno}", f"line over the {max_bytes / 2**20:g} MB limit for one "
                                                       "document; split it or raise --max-file-mb"))
                    continue
            except (OSError, EOFError, zlib.error) as exc:
                skipped.append((f"{rel}:{lineno + 1}", f"corrupt or truncated stream ({exc}); rest of file skipped, "
                                                       f"{kept} documents before it kept"))
                return
            if not line:
                return
            lineno += 1
            where = f"{rel}:{lineno}"
            record, why = _parse_line(line, first=lineno == 1)
            if why:
                skipped.append((where, why))
                continue
            if record is None:
                continue
            title = record.get("title") or ""
            text = record.get("text") or ""
            if not isinstance(title, str) or not isinstance(text, str):
                skipped.append((where, "'title' and 'text' must be strings"))
                continue
            if not (title.strip() or text.strip()):
                skipped.append((where, "no 'title' or 'text'"))
                continue
            doc_id = record.get("_id", record.get("id"))
            doc_id = str(doc_id) if doc_id is not None else where
            if not all(map(_is_clean, (doc_id, title, text))):
                skipped.append((where, "invalid characters (a lone surrogate such as \\ud800, or NUL) "
                                       "in '_id', 'title' or 'text'"))
                continue
            kept += 1
            yield Document(doc_id=doc_id, title=title.strip(), text=text.strip(), source=where)


def _parse_line(line: bytes, first: bool) -> tuple[dict | None, str]:
    """(record, "") for a JSON object line, (None, "") for a blank line, (None, why) to skip it."""
    try:
        decoded = line.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    if not decoded.strip():
        return None, ""
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON ({exc.msg})"
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return None, f"malformed JSON ({exc})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, ""


def _is_clean(text: str) -> bool:
    """False for text with a lone surrogate (not encodable as UTF-8) or a NUL character."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
