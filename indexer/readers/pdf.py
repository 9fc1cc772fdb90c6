"""PDF (``.pdf``) with pypdf (pure Python, BSD): one section per page, numbered from 1.

The outline (bookmarks), when the PDF has one, gives each page its heading path: the
latest bookmark at each level that starts on or before the page. Encrypted files are
opened with the empty password (many "protected" PDFs only restrict printing); one that
needs a real password, one with no text layer at all (scanned, no OCR) and one pypdf
cannot parse are skipped with the reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

from indexer.readers.base import FileInput, SkipFile, clean, describe_error, require
from pipeline.types import Document, Section, document_from_sections

NAME = "pdf"
SUFFIXES = (".pdf",)
VERSION = 1
LIBRARY = "pypdf"

logger = logging.getLogger(__name__)


def read(file: FileInput) -> Iterator[Document]:
    pypdf = require("pypdf", "pypdf", "reading PDF files")
    data = file.read_bytes()
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise SkipFile("corrupt PDF (no %PDF header)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypt(reader):
            raise SkipFile("encrypted PDF that needs a password; decrypt it (e.g. qpdf --decrypt) to index it")
        pages = reader.pages
        count = len(pages)
    except SkipFile:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files; none may stop the build
        raise SkipFile(f"corrupt PDF ({describe_error(exc)})") from None
    outline = _outline(reader)
    sections: list[Section] = []
    for number in range(1, count + 1):
        try:
            text = pages[number - 1].extract_text() or ""
        except Exception as exc:  # one bad page (broken font or content stream) loses that page only
            logger.warning("%s: page %d left out (%s)", file.rel, number, describe_error(exc))
            continue
        text = clean(text).strip()
        if text:
            sections.append(Section(text, number, _path_at(outline, number)))
    if not sections:
        raise SkipFile(f"no text layer in {count} page{'s' * (count != 1)} (a scanned PDF?); "
                       "run OCR on it first (e.g. ocrmypdf) to index it")
    title, author = _info(reader)
    metadata = {"format": NAME, "pages": count, **({"author": author} if author else {})}
    yield document_from_sections(file.rel, sections, title=title, source=file.rel, metadata=metadata)


def _decrypt(reader) -> bool:
    try:
        return bool(reader.decrypt(""))
    except Exception as exc:  # e.g. AES without the cryptography package, or a broken /Encrypt
        raise SkipFile(f"encrypted PDF that cannot be opened ({describe_error(exc)})") from None


def _info(reader) -> tuple[str, str]:
    try:
        info = reader.metadata
        title = clean(str(info.title or "")).strip() if info else ""
        author = clean(str(info.author or "")).strip() if info else ""
    except Exception:  # a damaged info dictionary only loses the title
        return "", ""
    return title, author


def _outline(reader) -> list[tuple[int, int, str]]:
    """(first page, depth, title) of every bookmark, in document order; empty when there are none."""
    out: list[tuple[int, int, str]] = []

    def walk(items, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
                title = clean(str(item.title or "")).strip()
            except Exception:
                continue
            if page is not None and page >= 0 and title:
                out.append((page + 1, depth, title))

    try:
        walk(reader.outline, 0)
    except Exception:  # a damaged outline only loses the headings
        return []
    return out


def _path_at(outline: list[tuple[int, int, str]], page: int) -> tuple[str, ...]:
    path: list[tuple[int, str]] = []
    for first, depth, title in outline:
        if first > page:
            continue
        while path and path[-1][0] >= depth:
            path.pop()
        path.append((depth, title))
    return tuple(title for _, title in path)
