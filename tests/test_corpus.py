"""Corpus reading: formats, BEIR layout, and the skippable problems."""

from __future__ import annotations

import gzip
import json

import pytest

from indexer.corpus import read_corpus
from pipeline.errors import CorpusError


def write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def test_reads_txt_md_jsonl_and_gz(tmp_path):
    write(tmp_path / "a.txt", "plain text")
    write(tmp_path / "sub" / "b.md", "# Heading\nBody here.")
    write(tmp_path / "c.jsonl", json.dumps({"_id": "c1", "title": "T", "text": "X"}) + "\n")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"_id": "d1", "title": "", "text": "gz text"}) + "\n")
    write(tmp_path / "image.png", b"\x89PNG")
    corpus = read_corpus(tmp_path)
    docs = {d.doc_id: d for d in corpus.documents}
    assert set(docs) == {"a.txt", "sub/b.md", "c1", "d1"}
    assert docs["sub/b.md"].title == "Heading" and docs["sub/b.md"].text == "Body here."
    assert docs["c1"].full_text == "T X" and docs["c1"].source == "c.jsonl:1"
    assert corpus.unsupported == 1 and corpus.skipped == []


def test_beir_folder_reads_only_the_corpus(tmp_path):
    write(tmp_path / "corpus.jsonl", json.dumps({"_id": "1", "title": "t", "text": "doc"}) + "\n")
    write(tmp_path / "queries.jsonl", json.dumps({"_id": "q1", "text": "query"}) + "\n")
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\t1\t1\n")
    assert [d.doc_id for d in read_corpus(tmp_path).documents] == ["1"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("binary.txt", b"\x00\x01\x02binary", "binary content"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, content, reason):
    write(tmp_path / "good.txt", "fine")
    write(tmp_path / name, content)
    corpus = read_corpus(tmp_path)
    assert [d.doc_id for d in corpus.documents] == ["good.txt"]
    assert len(corpus.skipped) == 1 and corpus.skipped[0][0] == name and reason in corpus.skipped[0][1]


def test_malformed_jsonl_lines_and_duplicates(tmp_path):
    lines = [
        json.dumps({"_id": "1", "text": "one"}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"_id": "1", "text": "duplicate"}),
        json.dumps({"_id": "2", "text": ""}),
        json.dumps({"_id": "3", "text": "three"}),
    ]
    write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    corpus = read_corpus(tmp_path)
    assert [d.doc_id for d in corpus.documents] == ["1", "3"]
    reasons = [why for _, why in corpus.skipped]
    assert any("malformed JSON" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)
    assert any("duplicate document id '1'" in r for r in reasons)
    assert any("no 'title' or 'text'" in r for r in reasons)


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no supported files"):
        read_corpus(tmp_path / "empty")
    write(tmp_path / "only" / "x.bin", b"\x00\x01")
    with pytest.raises(CorpusError, match="no supported files"):
        read_corpus(tmp_path / "only")
    write(tmp_path / "broken" / "x.pdf", b"%PDF")  # a PDF is read now: a truncated one is skipped, not unsupported
    with pytest.raises(CorpusError, match="no readable document"):
        read_corpus(tmp_path / "broken")
    write(tmp_path / "blank" / "x.txt", b"   \n")
    with pytest.raises(CorpusError, match="no readable document"):
        read_corpus(tmp_path / "blank")
