"""Document readers on small real files made here: PDF pages, HTML main content, DOCX and Markdown headings,
the files that are skipped (and why), structure-aware chunks, and an index built before format version 2."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("pypdf", reason="needs the 'formats' extra: pip install -e '.[formats]'")
pytest.importorskip("fpdf", reason="needs fpdf2 (the 'test' extra) to write PDFs")

from indexer.build import build_index
from indexer.corpus import read_corpus
from pipeline.config import load_config
from pipeline.pipeline import Pipeline
from pipeline.render import where
from pipeline.store import CHUNKS, MANIFEST, current_version
from tests.conftest import write_config

ARTICLE = """<html lang="en"><head><title>Widget guide</title></head><body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a> | <a href="/blog">Blog</a> | <a href="/shop">Shop</a></nav>
<article><h1>Installing the widget</h1>
<p>The widget needs Python 3.10 or later and about two hundred megabytes of disk space on the target machine.</p>
<h2>Linux</h2><p>On Linux, install the widget with the system package manager, then run widget-setup as root.</p>
<h3>Debian</h3><p>Debian users run apt-get install widget and enable the unit with systemctl enable widget.</p>
<h2>Windows</h2><p>On Windows, download the installer and double-click it; the wizard asks for a license key.</p>
</article><footer>Copyright Widget Corp. All rights reserved. Privacy policy. Terms of use.</footer></body></html>"""

MARKDOWN = """---
lang: en
team: infra
---
# Operations handbook
Intro paragraph.

## Backups
Nightly snapshots go to the cold bucket.

### Restore
Use restore-tool with the snapshot id.

```
# not a heading: a shell comment
```

## Monitoring
Dashboards live in grafana.
"""


def make_pdf(path, pages: list[tuple[str | None, str]], *, password: str | None = None) -> None:
    """A PDF with one page per (bookmark or None, text); bookmarks nest under the first one named 'A/B'."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for bookmark, text in pages:
        pdf.add_page()
        for level, name in enumerate((bookmark or "").split("/") if bookmark else []):
            pdf.start_section(name, level=level)
        if text:
            pdf.multi_cell(0, 8, text)
        else:
            pdf.rect(10, 10, 80, 120)  # a drawing, no text: what a scan without OCR looks like to a reader
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


def make_docx(path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Release notes"
    document.add_heading("Version 2", level=1)
    document.add_paragraph("Version 2 adds streaming answers.")
    document.add_heading("Breaking changes", level=2)
    document.add_paragraph("The old --top flag is gone; use --top-n.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "flag", "replacement"
    document.add_heading("Version 1", level=1)
    document.add_paragraph("The first release.")
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(str(path))


@pytest.fixture()
def mixed(tmp_path):
    root = tmp_path / "docs"
    make_pdf(root / "manuals" / "widget.pdf", [
        ("Overview", "The widget is a small command line tool for moving files between machines."),
        ("Installation/Linux", "To install on Linux run apt-get install widget and then start the flux capacitor."),
        ("Troubleshooting", "If the widget hangs, delete the lock file in the cache folder."),
    ])
    (root / "web").mkdir(parents=True)
    (root / "web" / "guide.html").write_text(ARTICLE, encoding="utf-8")
    make_docx(root / "notes" / "release.docx")
    (root / "ops.md").write_text(MARKDOWN, encoding="utf-8")
    (root / "data.jsonl").write_text(
        json.dumps({"_id": "z1", "title": "Great Wall", "text": "长城是中国古代的军事防御工程。",
                    "metadata": {"lang": "zh"}}) + "\n", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n")
    (root / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    return root


def test_each_format_reads_text_pages_and_heading_paths(mixed):
    corpus = read_corpus(mixed)
    docs = {d.doc_id: d for d in corpus.documents}
    assert set(docs) == {"manuals/widget.pdf", "web/guide.html", "notes/release.docx", "ops.md", "z1"}

    pdf = docs["manuals/widget.pdf"]
    assert [(s.page, s.headings) for s in pdf.sections] == [
        (1, ("Overview",)), (2, ("Installation", "Linux")), (3, ("Troubleshooting",))]
    assert "apt-get install widget" in pdf.sections[1].text and pdf.metadata["pages"] == 3

    html = docs["web/guide.html"]
    assert html.title == "Installing the widget" and html.metadata["lang"] == "en"
    assert "Home" not in html.text and "Copyright" not in html.text  # navigation and footer left out
    paths = {s.headings: s.text for s in html.sections}
    assert "apt-get install widget" in paths[("Linux", "Debian")] and "license key" in paths[("Windows",)]

    notes = docs["notes/release.docx"]
    assert notes.title == "Release notes"
    assert [s.headings for s in notes.sections] == [("Version 2",), ("Version 2", "Breaking changes"), ("Version 1",)]
    assert "flag | replacement" in notes.sections[1].text

    ops = docs["ops.md"]
    assert ops.title == "Operations handbook" and ops.metadata == {"format": "markdown", "lang": "en", "team": "infra"}
    assert [s.headings for s in ops.sections] == [(), ("Backups",), ("Backups", "Restore"), ("Monitoring",)]
    assert "# not a heading" in ops.sections[2].text

    assert docs["z1"].metadata == {"lang": "zh"}
    assert corpus.unsupported_files == ["image.png", "sheet.xlsx"]
    assert corpus.unsupported_by_extension == {".png": 1, ".xlsx": 1}
    assert dict(corpus.readers) == {"pdf": 1, "html": 1, "docx": 1, "markdown": 1, "jsonl": 1}


@pytest.mark.parametrize(("name", "reason"), [
    ("corrupt.pdf", "corrupt PDF"),
    ("locked.pdf", "encrypted PDF that needs a password"),
    ("scan.pdf", "no text layer"),
    ("empty.html", "no main text found"),
    ("broken.docx", "corrupt DOCX"),
])
def test_unreadable_files_are_skipped_with_the_reason(tmp_path, name, reason):
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    if name == "corrupt.pdf":
        (tmp_path / name).write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> garbage\n")
    elif name == "locked.pdf":
        make_pdf(tmp_path / name, [(None, "secret plans")], password="s3cret")
    elif name == "scan.pdf":
        make_pdf(tmp_path / name, [(None, ""), (None, "")])
    elif name == "empty.html":
        (tmp_path / name).write_text("<html><body><nav><a href='/'>Home</a></nav></body></html>", encoding="utf-8")
    else:
        (tmp_path / name).write_bytes(b"PK\x03\x04 not really a zip")
    corpus = read_corpus(tmp_path)
    assert [d.doc_id for d in corpus.documents] == ["ok.txt"]
    assert len(corpus.skipped) == 1 and corpus.skipped[0][0] == name and reason in corpus.skipped[0][1]


def test_pdf_with_the_empty_password_is_read(tmp_path):
    from pypdf import PdfReader, PdfWriter

    make_pdf(tmp_path / "plain.pdf", [(None, "restricted printing only")])
    writer = PdfWriter(clone_from=PdfReader(tmp_path / "plain.pdf"))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    with open(tmp_path / "open.pdf", "wb") as handle:
        writer.write(handle)
    (tmp_path / "plain.pdf").unlink()
    corpus = read_corpus(tmp_path)
    assert "restricted printing" in corpus.documents[0].text


def test_chunks_follow_pages_and_sections(tmp_path, mixed, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index",
                                      chunking={"size": 120, "overlap": 8}))
    report = build_index(mixed, config)
    assert report.manifest.format_version == 2
    assert set(report.manifest.readers) == {"pdf", "html", "docx", "markdown", "jsonl"}
    assert report.manifest.readers["pdf"]["library"] == "pypdf" and report.manifest.readers["pdf"]["documents"] == 1
    assert report.unsupported == ["image.png", "sheet.xlsx"]
    from pipeline.store import ChunkStore

    store = ChunkStore(report.version_dir / CHUNKS)
    chunks = list(store.get(list(range(store.count()))).values())
    pdf = [c for c in chunks if c.doc_id == "manuals/widget.pdf"]
    assert [c.page for c in pdf] == [1, 2, 3]  # one chunk per page: none straddles a page
    assert pdf[1].headings == ("Installation", "Linux") and pdf[1].metadata["format"] == "pdf"
    ops = [c for c in chunks if c.doc_id == "ops.md"]
    assert {c.headings for c in ops} >= {("Backups",), ("Monitoring",)}  # top-level sections kept apart
    assert all(not (c.headings[:1] == ("Backups",) and "grafana" in c.text) for c in ops)


def test_page_of_the_answer_is_shown_and_filters_apply(tmp_path, mixed, tiny_embedder_dir, capsys):
    """BM25 makes the tiny corpus deterministic: the question's words are on page 2 of the PDF."""
    pytest.importorskip("bm25s")
    config_path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index",
                               retriever={"type": "bm25", "top_k": 10}, chunking={"size": 120, "overlap": 8})
    build_index(mixed, load_config(config_path))
    pipe = Pipeline.from_yaml(config_path)
    result = pipe.ask("where is the flux capacitor")
    top = result.hits[0]
    assert (top.source, top.page, top.headings) == ("manuals/widget.pdf", 2, ("Installation", "Linux"))
    assert where(top) == "manuals/widget.pdf p. 2 › Installation › Linux"
    filtered = pipe.ask("install widget", filter=["source=web/*.html"])
    assert filtered.hits and {h.source for h in filtered.retrieved} == {"web/guide.html"}

    from commands.ask import main

    assert main(["where is the flux capacitor", "--config", str(config_path), "--json",
                 "--filter", "source=manuals/*.pdf"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["retrieved"][0]
    assert first["page"] == 2 and first["headings"] == ["Installation", "Linux"] and first["positions"] == [1]
    assert {h["source"] for h in data["retrieved"]} == {"manuals/widget.pdf"}


def test_update_re_encodes_only_the_changed_pdf(tmp_path, mixed, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index",
                                      chunking={"size": 120, "overlap": 8}))
    build_index(mixed, config)
    make_pdf(mixed / "manuals" / "widget.pdf", [
        ("Overview", "The widget is a small command line tool for moving files between machines."),
        ("Installation/Linux", "To install on Linux use the snap package now."),
        ("Troubleshooting", "If the widget hangs, delete the lock file in the cache folder."),
    ])
    report = build_index(mixed, config, update=True)
    assert report.changes["changed"] == 1 and report.changes["unchanged"] == 4
    assert report.changes["encoded_chunks"] == 1  # page 2 only


def test_an_index_built_before_format_2_still_loads(tmp_path, tiny_corpus, tiny_embedder_dir):
    config_path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")
    build_index(tiny_corpus, load_config(config_path))
    version = current_version(tmp_path / "index")
    # rewrite the chunk store and the manifest as format version 1 wrote them
    db = sqlite3.connect(version / CHUNKS)
    db.executescript(
        "CREATE TABLE old AS SELECT id, chunk_id, doc_id, text, source, position, start, end_, title FROM chunks;"
        "DROP TABLE chunks; ALTER TABLE old RENAME TO chunks;")
    db.close()
    manifest = json.loads((version / MANIFEST).read_text())
    manifest.pop("readers")
    manifest["format_version"] = 1
    (version / MANIFEST).write_text(json.dumps(manifest))
    pipe = Pipeline.from_yaml(config_path)
    hits = pipe.ask("vitamin D deficiency").hits
    assert hits and all(h.page is None and h.headings == () and h.metadata == {} for h in hits)
    assert {h.source for h in pipe.ask("vitamin", filter={"source": "*.txt"}).retrieved} == {"iron.txt"}
    manifest["format_version"] = 99
    (version / MANIFEST).write_text(json.dumps(manifest))
    from pipeline.errors import IndexMissingError

    with pytest.raises(IndexMissingError, match="rebuild"):
        _ = Pipeline.from_yaml(config_path).index


def test_a_format_library_that_fails_to_import_reports_the_real_error(tmp_path):
    """trafilatura installed but lxml_html_clean missing: the error says so, not that trafilatura is missing."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = (
        "import sys\n"
        "sys.modules['lxml_html_clean'] = None  # as when the package is not installed\n"
        "from indexer.readers.base import require\n"
        "from pipeline.errors import BrokenDependencyError, MissingDependencyError\n"
        "try:\n"
        "    require('trafilatura', 'trafilatura', 'reading HTML files')\n"
        "except BrokenDependencyError as exc:\n"
        "    print('broken:', exc)\n"
        "try:\n"
        "    require('no_such_format_library', 'no-such', 'reading X files')\n"
        "except MissingDependencyError as exc:\n"
        "    print('missing:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    broken, missing = out.stdout.splitlines()
    assert broken.startswith("broken: reading HTML files needs the package 'trafilatura', which is installed but "
                             "fails to import (") and "lxml_html_clean" in broken, broken
    assert missing == ("missing: reading X files needs the package 'no-such', which is not installed; install it "
                       "with: pip install -e '.[formats]'")


def test_the_formats_extra_declares_what_its_readers_import():
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from tests.conftest import ROOT

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[;]", spec)[0].strip().lower() for spec in extra["formats"]}
    assert {"pypdf", "cryptography", "trafilatura", "lxml_html_clean", "python-docx"} <= names
