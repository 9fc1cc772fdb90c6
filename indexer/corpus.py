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
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import CorpusError
from pipeline.types import Document

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
BEIR_CORPUS_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")
MAX_FILE_MB = 32.0


@dataclass
class Corpus:
    """Documents read from a corpus path, with what was skipped and why."""

    root: Path
    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    unsupported: int = 0


def read_corpus(root: str | Path, max_file_mb: float = MAX_FILE_MB) -> Corpus:
    """Read every supported document under ``root`` (a folder or a single file), in path order.

    A ``.txt``/``.md`` file is one document; one larger than ``max_file_mb``
    is skipped (split it, or raise the limit). JSONL files are streamed line
    by line and have no size limit.

    Raises:
        CorpusError: ``root`` is missing, or holds no readable document.
    """
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"corpus path {root} does not exist")
    files = list(_corpus_files(root))
    corpus = Corpus(root=root, documents=[])
    seen: dict[str, str] = {}
    supported = 0
    for path in files:
        if not _is_supported(path):
            corpus.unsupported += 1
            continue
        supported += 1
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        for doc in _read_file(path, rel, corpus.skipped, int(max_file_mb * 2**20)):
            if doc.doc_id in seen:
                corpus.skipped.append((doc.source, f"duplicate document id {doc.doc_id!r} (first in {seen[doc.doc_id]})"))
                continue
            seen[doc.doc_id] = doc.source
            corpus.documents.append(doc)
    for where, why in corpus.skipped:
        logger.warning("skipped %s: %s", where, why)
    if not corpus.documents:
        if supported == 0:
            kinds = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
            raise CorpusError(f"no supported files under {root} (looked for {kinds})")
        raise CorpusError(f"no readable document under {root} ({len(corpus.skipped)} skipped: see warnings)")
    return corpus


def _corpus_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for name in BEIR_CORPUS_NAMES:
        if (root / name).is_file() and (root / "qrels").is_dir():
            logger.info("%s is a BEIR collection: reading %s only", root, name)
            yield root / name
            return
    # Symlinked folders are followed, each real folder once, so a link loop ends.
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if name.startswith(".") or real in seen:
                if real in seen and not name.startswith("."):
                    logger.warning("not following %s: it links back to a folder already read", os.path.join(dirpath, name))
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)


def _read_file(path: Path, rel: str, skipped: list[tuple[str, str]], max_bytes: int) -> Iterator[Document]:
    name = path.name.lower()
    try:
        if name.endswith(JSONL_SUFFIXES):
            yield from _read_jsonl(path, rel, skipped)
            return
        size = path.stat().st_size
        if size > max_bytes:
            skipped.append((rel, f"{size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit for one document; "
                                 "split it or raise --max-file-mb"))
            return
        text = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        skipped.append((rel, f"unreadable: {exc}"))
        return
    if not text.strip():
        skipped.append((rel, "empty file"))
        return
    if b"\x00" in text[:8192]:
        skipped.append((rel, "binary content in a text file"))
        return
    try:
        content = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        skipped.append((rel, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
        return
    title, body = _split_title(content) if name.endswith((".md", ".markdown")) else ("", content.strip())
    yield Document(doc_id=rel, title=title, text=body, source=rel)


def _split_title(markdown: str) -> tuple[str, str]:
    """A leading ``# Heading`` becomes the title; the rest is the text."""
    stripped = markdown.strip()
    first, _, rest = stripped.partition("\n")
    if first.startswith("# "):
        return first[2:].strip(), rest.strip()
    return "", stripped


def _read_jsonl(path: Path, rel: str, skipped: list[tuple[str, str]]) -> Iterator[Document]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                skipped.append((f"{rel}:{lineno + 1}", f"not UTF-8 ({exc.reason}); rest of file skipped"))
                return
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            where = f"{rel}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                skipped.append((where, f"malformed JSON ({exc.msg})"))
                continue
            if not isinstance(record, dict):
                skipped.append((where, "not a JSON object"))
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
            yield Document(doc_id=doc_id, title=title.strip(), text=text.strip(), source=where)
