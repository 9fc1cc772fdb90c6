"""Pipeline.ask over a tiny index: both lists, timings, the disabled reranker, bad queries."""

from __future__ import annotations

import pytest

from indexer.build import build_index
from pipeline import InputError, Pipeline
from pipeline.config import load_config


@pytest.fixture()
def built(tiny_config, tiny_corpus):
    build_index(tiny_corpus, load_config(tiny_config))
    return tiny_config


def test_ask_returns_retrieved_and_reranked(built):
    pipe = Pipeline.from_yaml(built)
    result = pipe.ask("vitamin D and bone pain")
    assert 5 <= len(result.retrieved) <= 10
    assert [h.rank for h in result.retrieved] == list(range(1, len(result.retrieved) + 1))
    scores = [h.score for h in result.retrieved]
    assert scores == sorted(scores, reverse=True)
    assert len(result.reranked) == 3 and result.hits == result.reranked
    retrieved_ids = {h.chunk_id for h in result.retrieved}
    assert all(h.chunk_id in retrieved_ids for h in result.reranked)
    reranked_scores = [h.score for h in result.reranked]
    assert reranked_scores == sorted(reranked_scores, reverse=True)
    assert all(0 < s < 1 for s in reranked_scores)
    assert {"embed", "search", "retrieve", "rerank", "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())


def test_disabled_reranker_returns_the_first_top_n(built):
    pipe = Pipeline.from_yaml(built, ["reranker.enabled=false"])
    result = pipe.ask("vitamin D")
    assert result.reranked is None
    assert result.hits == result.retrieved[:5]
    assert "rerank" not in result.timings


def test_top_k_larger_than_the_corpus(built):
    pipe = Pipeline.from_yaml(built, ["retriever.top_k=500"])
    result = pipe.ask("tea", top_n=3)
    assert len(result.retrieved) == pipe.index.vectors.ntotal


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "\x00\x01"])
def test_empty_queries_are_rejected(built, query):
    with pytest.raises(InputError, match="query is empty"):
        Pipeline.from_yaml(built).ask(query)


def test_control_characters_and_very_long_queries(built):
    pipe = Pipeline.from_yaml(built)
    assert pipe.ask("vitamin\x00 D\x1b").query == "vitamin  D"
    result = pipe.ask("vitamin D deficiency " * 2000)
    assert len(result.reranked) == 3


def test_top_n_above_top_k_is_rejected(built):
    with pytest.raises(InputError, match=r"top_n \(20\) is larger than top_k \(10\)"):
        Pipeline.from_yaml(built).ask("x", top_n=20)


@pytest.mark.parametrize("titled", [False, True])
def test_reranker_reads_chunks_with_their_title_when_asked(built, titled):
    """``reranker.title``: a chunk that does not begin with its document's title is read with it in front."""
    pipe = Pipeline.from_yaml(built, [f"reranker.title={str(titled).lower()}"]).load(generator=False)
    seen: list[list[str]] = []
    score = pipe.reranker.score
    pipe.reranker.score = lambda query, passages: seen.append(list(passages)) or score(query, passages)
    result = pipe.ask("vitamin D and bone pain")
    (texts,) = seen
    assert len(texts) == len(result.retrieved)
    later = 0
    for hit, text in zip(result.retrieved, texts):
        if titled and hit.title and not hit.text.casefold().startswith(hit.title.casefold()):
            later += 1
            assert text.startswith(hit.title) and text.endswith("\n" + hit.text)
        else:  # no title (a .txt file), a first chunk that begins with it, or the option off
            assert text == hit.text
    assert not titled or later > 0, "the tiny corpus has titled chunks after the first"
