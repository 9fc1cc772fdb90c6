"""HTML (``.html``, ``.htm``) with trafilatura: the main content without navigation and boilerplate.

trafilatura's XML output keeps the article's headings (``<head rend="h2">``), which become
sections with heading paths; its metadata gives the title, and the page's language, author
and date when it states them. A page with no main text (only navigation, or an empty body)
is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from indexer.readers.base import FileInput, SectionBuilder, SkipFile, clean, describe_error, require
from pipeline.types import Document, Section, document_from_sections

NAME = "html"
SUFFIXES = (".html", ".htm", ".xhtml")
VERSION = 1
LIBRARY = "trafilatura"


def read(file: FileInput) -> Iterator[Document]:
    trafilatura = require("trafilatura", "trafilatura", "reading HTML files")
    data = file.read_bytes()
    if not data.strip():
        raise SkipFile("empty file")
    try:
        xml = trafilatura.extract(data, output_format="xml", with_metadata=True, include_comments=False,
                                  include_tables=True, favor_recall=True)
    except Exception as exc:  # a parser error on a malformed page must not stop the build
        raise SkipFile(f"unparsable HTML ({describe_error(exc)})") from None
    if not xml:
        raise SkipFile("no main text found (only navigation or boilerplate, or an empty page)")
    title, sections, metadata = _from_xml(xml)
    if not sections:
        raise SkipFile("no main text found (only navigation or boilerplate, or an empty page)")
    lang = _lang(data)
    if lang:
        metadata.setdefault("lang", lang)
    yield document_from_sections(file.rel, sections, title=title, source=file.rel,
                                 metadata={"format": NAME, **metadata})


def _from_xml(xml: str) -> tuple[str, list[Section], dict]:
    from lxml import etree

    root = etree.fromstring(xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    title = clean(root.get("title") or "").strip()
    metadata = {key: clean(root.get(key)) for key in ("author", "date", "url") if root.get(key)}
    main = root.find("main")
    builder = SectionBuilder()
    for element in main if main is not None else ():
        text = clean(" ".join("".join(element.itertext()).split()))
        if element.tag == "head":
            rend = element.get("rend") or "h2"
            level = int(rend[1]) if rend[:1] == "h" and rend[1:2].isdigit() else 2
            if level == 1 and title and text == title and not builder.sections and not builder.path:
                builder.close()  # the article's h1 repeats the title
                continue
            builder.heading(level, text)
        elif text:
            builder.add(text)
    sections = builder.finish()
    return title, sections, metadata


def _lang(data: bytes) -> str:
    """The ``lang`` attribute of the ``<html>`` element, when there is one."""
    import re

    match = re.search(rb"<html[^>]*\slang\s*=\s*[\"']?([A-Za-z]{2,3}(?:-[A-Za-z0-9]+)?)", data[:4096], re.I)
    return match.group(1).decode("ascii").lower() if match else ""
