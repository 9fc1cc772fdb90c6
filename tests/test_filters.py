"""Filters: parsing and matching, the first stages restricted inside the search (FAISS, BM25, hybrid,
Milvus) still filling top_k, a filter that matches nothing, and context assembly after the reranker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.build import build_index
from pipeline.config import load_config
from pipeline.context import assemble_context
from pipeline.errors import InputError
from pipeline.filters import Filter, NoMatchError
from pipeline.indexes.faiss import FaissIndex
from pipeline.pipeline import Pipeline
from pipeline.types import Hit
from tests.conftest import write_config


def test_parse_and_match():
    f = Filter.parse(["source=manuals/*.pdf", "lang=zh", "lang=en"])
    assert str(f) == "lang=zh lang=en source=manuals/*.pdf"
    assert f.matches("manuals/a/b.pdf", {"lang": "en"})  # * crosses folders; values of one key are alternatives
    assert not f.matches("manuals/a.pdf", {"lang": "fr"}) and not f.matches("notes/a.pdf", {"lang": "zh"})
    assert not f.matches("manuals/a.pdf", {})  # a missing key does not match
    assert Filter.parse(["source=corpus.jsonl"]).matches("corpus.jsonl:12", {})  # a JSONL line's file
    tags = Filter.from_value({"tag": "b", "year": 2020, "draft": False})
    assert tags.matches("x", {"tag": ["a", "b"], "year": 2020, "draft": False})
    assert Filter.from_value(None) is None and Filter.from_value({}) is None and Filter.from_value([]) is None
    assert Filter.parse(["page=2"]).matches("a.pdf", {}, page=2) and not Filter.parse(["page=2"]).matches("a", {})


@pytest.mark.parametrize(("value", "match"), [
    (["lang"], "expected KEY=VALUE"), (["=zh"], "expected KEY=VALUE"), ([{"a": 1}], "KEY=VALUE"),
    ({"lang": {"x": 1}}, "strings, numbers or booleans"), ({"page": "two"}, "whole number"), (5, "an object"),
])
def test_bad_filters_are_input_errors(value, match):
    with pytest.raises(InputError, match=match):
        Filter.from_value(value)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
@pytest.mark.parametrize("every", [2, 97])
def test_faiss_filtered_search_returns_only_matching_rows_and_fills_k(factory, every):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(FaissIndex.Params(factory=factory, device="cpu"))
    index.build(vectors)
    rows = np.arange(0, 2000, every, dtype=np.int64)
    queries = vectors[:3]
    scores, ids = index.search(queries, 10, rows=rows)
    assert ids.shape == (3, 10) and np.isin(ids, rows).all()
    exact = rows[np.argsort(-(queries @ vectors[rows].T), axis=1)[:, :10]]
    assert (ids == exact).all()  # up to EXACT_MAX_ROWS rows are scored exactly, whatever the factory
    assert index.search(queries, 10, rows=np.array([5]))[1].tolist() == [[5]] * 3  # fewer rows than k


@pytest.fixture()
def tagged(tmp_path):
    """Thirty short documents in two folders, with a 'lang' in JSONL metadata."""
    root = tmp_path / "corpus"
    for folder in ("manuals", "notes"):
        (root / folder).mkdir(parents=True)
        for i in range(12):
            (root / folder / f"doc{i}.md").write_text(f"# {folder} {i}\nVitamin D note number {i} in {folder}.")
    lines = [{"_id": f"j{i}", "text": f"Vitamin D line {i}", "metadata": {"lang": "zh" if i % 2 else "en"}}
             for i in range(6)]
    (root / "lines.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.mark.parametrize("retriever", ["dense", "bm25", "hybrid"])
def test_filtered_ask_returns_only_matching_sources_and_still_fills_top_k(tmp_path, tagged, tiny_embedder_dir,
                                                                          retriever):
    if retriever != "dense":
        pytest.importorskip("bm25s")
    config = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index",
                          retriever={"type": retriever, "top_k": 10})
    build_index(tagged, load_config(config))
    pipe = Pipeline.from_yaml(config)
    result = pipe.ask("vitamin D note", filter={"source": "manuals/*"})
    assert len(result.retrieved) == 10 and all(h.source.startswith("manuals/") for h in result.retrieved)
    zh = pipe.ask("vitamin D line", filter=["lang=zh"]).retrieved
    assert zh and {h.doc_id for h in zh} <= {"j1", "j3", "j5"} and all(h.metadata["lang"] == "zh" for h in zh)
    with pytest.raises(NoMatchError, match=r"no chunk matches the filter lang=fr .*keys in this index: .*lang"):
        pipe.ask("vitamin", filter={"lang": "fr"})


def test_milvus_filter_expression(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from pipeline.indexes.milvus import MilvusIndex

    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    version = tmp_path / "v-test"
    version.mkdir()
    writer = MilvusIndex(MilvusIndex.Params())
    writer.build(vectors)
    writer.save(version)
    reader = MilvusIndex(MilvusIndex.Params())
    reader.load(version)
    for rows in (np.arange(0, 300, 7), np.arange(0, 300)[np.arange(300) % 7 != 0]):  # 'in' and 'not in'
        _, ids = reader.search(vectors[:2], 10, rows=rows)
        exact = rows[np.argsort(-(vectors[:2] @ vectors[rows].T), axis=1)[:, :10]]
        assert ids.shape == (2, 10) and (ids == exact).all()


def _hit(doc: str, position: int, rank: int, text: str = "", page=None) -> Hit:
    return Hit(f"{doc}#{position}", doc, text or f"{doc}{position}", doc, position, 1.0 / rank, rank, 0.0, rank,
               page=page)


def test_context_caps_chunks_per_document_and_merges_neighbours():
    hits = [_hit("a", 3, 1, "alpha beta gamma delta"), _hit("a", 4, 2, "gamma delta epsilon"), _hit("a", 9, 3),
            _hit("b", 0, 4), _hit("a", 1, 5), _hit("c", 0, 6)]
    capped = assemble_context(hits, 4, max_chunks_per_doc=2)
    assert [h.chunk_id for h in capped] == ["a#3", "a#4", "b#0", "c#0"] and [h.rank for h in capped] == [1, 2, 3, 4]
    merged = assemble_context(hits, 4, max_chunks_per_doc=2, merge_neighbours=True)
    assert [h.chunk_id for h in merged] == ["a#3", "b#0", "c#0", "a#9"]  # the merge freed a place
    assert merged[0].text == "alpha beta gamma delta epsilon" and merged[0].positions == (3, 4)
    few = assemble_context(hits[:3], 3, max_chunks_per_doc=1)  # too few documents: the cap still fills top_n
    assert [h.chunk_id for h in few] == ["a#3", "a#4", "a#9"]
    pages = assemble_context([_hit("p", 0, 1, page=1), _hit("p", 1, 2, page=2)], 2, None, True)
    assert len(pages) == 2  # neighbours on different pages stay apart
