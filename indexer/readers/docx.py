"""Word (``.docx``) with python-docx: paragraphs and tables in order, one section per heading.

Paragraphs styled ``Heading 1`` .. ``Heading 9`` open sections (their heading path kept); the
``Title`` style, or the core properties' title, is the document's title. A file that is not
a valid DOCX (not a zip, or missing its document part) is skipped with the reason.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from indexer.readers.base import FileInput, SectionBuilder, SkipFile, clean, describe_error, require
from pipeline.types import Document, document_from_sections

NAME = "docx"
SUFFIXES = (".docx",)
VERSION = 1
LIBRARY = "python-docx"


def read(file: FileInput) -> Iterator[Document]:
    docx = require("docx", "python-docx", "reading Word (.docx) files")
    data = file.read_bytes()
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_blocks(document))
        props = document.core_properties
        title, author = clean(props.title or "").strip(), clean(props.author or "").strip()
    except SkipFile:
        raise
    except Exception as exc:  # not a zip, a missing part, broken XML: skip, never stop the build
        raise SkipFile(f"corrupt DOCX ({describe_error(exc)})") from None
    builder = SectionBuilder()
    for style, text in blocks:
        if style == "title":
            title = title or text
            continue
        level = _heading_level(style)
        if level is None:
            builder.add(text)
        else:
            builder.heading(level, text)
    sections = builder.finish()
    if not sections:
        raise SkipFile("no text in the document")
    metadata = {"format": NAME, **({"author": author} if author else {})}
    yield document_from_sections(file.rel, sections, title=title, source=file.rel, metadata=metadata)


def _blocks(document) -> Iterator[tuple[str, str]]:
    """(lower-case style name, text) of each non-empty paragraph, and of each table row, in body order."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in document.element.body.iterchildren():
        tag = child.tag.rpartition("}")[2]
        if tag == "p":
            paragraph = Paragraph(child, document)
            text = clean(paragraph.text).strip()
            if text:
                style = paragraph.style.name if paragraph.style is not None else ""
                yield (style or "").lower(), text
        elif tag == "tbl":
            for row in Table(child, document).rows:
                cells = [clean(cell.text).strip() for cell in row.cells]
                line = " | ".join(dict.fromkeys(c for c in cells if c))  # merged cells repeat their text
                if line:
                    yield "table", line


def _heading_level(style: str) -> int | None:
    if style.startswith("heading"):
        tail = style[len("heading"):].strip()
        return int(tail) if tail.isdigit() else 1
    return None
