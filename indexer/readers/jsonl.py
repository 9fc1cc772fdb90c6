"""BEIR-style JSON Lines (``.jsonl``, ``.jsonl.gz``): one document per line.

Each line is an object with ``_id`` (or ``id``), ``title``, ``text`` and an optional
``metadata`` object, carried into every chunk of the document and usable in filters
(``--filter lang=zh``). Lines are streamed with a bound; a bad line is skipped and
recorded, a corrupt gzip stream ends the file (the lines before it are kept).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator

from indexer.readers.base import FileInput, is_clean
from pipeline.types import Document

NAME = "jsonl"
SUFFIXES = (".jsonl", ".jsonl.gz")
VERSION = 2
LIBRARY = None


def read(file: FileInput) -> Iterator[Document]:
    rel, max_bytes = file.rel, file.max_bytes
    with file.open() as raw:
        handle = gzip.GzipFile(fileobj=raw, mode="rb") if file.path.name.lower().endswith(".gz") else raw
        lineno = 0
        kept = 0
        while True:
            try:
                line = handle.readline(max_bytes + 1)
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    while (rest := handle.readline(2**20)) and not rest.endswith(b"\n"):
                        pass
                    lineno += 1
                    file.skip(f"{rel}:{lineno}", f"line over the {max_bytes / 2**20:g} MB limit for one "
                                                 "document; split it or raise --max-file-mb")
                    continue
            except (OSError, EOFError, zlib.error) as exc:
                file.skip(f"{rel}:{lineno + 1}", f"corrupt or truncated stream ({exc}); rest of file skipped, "
                                                 f"{kept} documents before it kept")
                return
            if not line:
                return
            lineno += 1
            where = f"{rel}:{lineno}"
            record, why = _parse_line(line, first=lineno == 1)
            if why:
                file.skip(where, why)
                continue
            if record is None:
                continue
            doc, why = _document(record, where)
            if why:
                file.skip(where, why)
                continue
            kept += 1
            yield doc


def _document(record: dict, where: str) -> tuple[Document | None, str]:
    title = record.get("title") or ""
    text = record.get("text") or ""
    if not isinstance(title, str) or not isinstance(text, str):
        return None, "'title' and 'text' must be strings"
    if not (title.strip() or text.strip()):
        return None, "no 'title' or 'text'"
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return None, f"'metadata' must be a JSON object, got {type(metadata).__name__}"
    doc_id = record.get("_id", record.get("id"))
    doc_id = str(doc_id) if doc_id is not None else where
    if not all(map(is_clean, (doc_id, title, text, json.dumps(metadata, ensure_ascii=False)))):
        return None, ("invalid characters (a lone surrogate such as \\ud800, or NUL) "
                      "in '_id', 'title', 'text' or 'metadata'")
    return Document(doc_id=doc_id, title=title.strip(), text=text.strip(), source=where, metadata=metadata), ""


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
