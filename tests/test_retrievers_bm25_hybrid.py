"""BM25 and hybrid first stages: tokenizer, retrieval over a tiny index, RRF by hand, config errors,
and the BM25 anchor on SciFact (published nDCG@10 0.665 BEIR / 0.679 Anserini)."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, write_config

from indexer.build import build_index
from pipeline import ConfigError, Pipeline
from pipeline.config import load_config
from pipeline.registry import names
from pipeline.retrievers.bm25 import LexicalParams, Tokenizer
from pipeline.retrievers.hybrid import reciprocal_rank_fusion
from pipeline.types import Hit


def hit(chunk_id: str, doc_id: str | None = None) -> Hit:
    return Hit(chunk_id, doc_id or chunk_id.split("#")[0], f"text of {chunk_id}", "src", 0, 0.5, 1, 0.5, 1)


# --- tokenizer -------------------------------------------------------------------------------

def test_english_terms_are_lowercased_stemmed_and_stopwords_dropped():
    terms = Tokenizer(LexicalParams()).tokenize("The Running dogs ARE in the garden, a U.S. 2020 view")
    assert terms == ["run", "dog", "garden", "2020", "view"]


def test_english_without_stemmer_or_stopwords_keeps_words():
    terms = Tokenizer(LexicalParams(stemmer=None, stopwords=None)).tokenize("The running dogs")
    assert terms == ["the", "running", "dogs"]


def test_chinese_is_segmented_into_words_with_jieba():
    terms = Tokenizer(LexicalParams()).tokenize("长城是中国古代的军事防御工程。Great Wall")
    assert "长城" in terms and "军事" in terms and "great" in terms and "wall" in terms
    assert "。" not in terms and all(t.strip() for t in terms)


def test_chinese_bigrams_need_no_dictionary():
    assert Tokenizer(LexicalParams(chinese="bigram")).tokenize("维生素D缺乏") == ["维生", "生素", "缺乏"]
    assert Tokenizer(LexicalParams(chinese="bigram")).tokenize("茶") == ["茶"]


# --- reciprocal-rank fusion, worked out by hand ------------------------------------------------

def test_rrf_scores_by_hand():
    a, b, c = hit("a#0"), hit("b#0"), hit("c#0")
    fused = reciprocal_rank_fusion([[a, b, c], [c, a]], [1.0, 1.0], k=60)
    # a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62
    assert [h.chunk_id for h in fused] == ["a#0", "c#0", "b#0"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2].score == pytest.approx(1 / 62)
    assert [h.rank for h in fused] == [1, 2, 3] and [h.retrieval_rank for h in fused] == [1, 2, 3]
    assert fused[0].retrieval_score == fused[0].score


def test_rrf_weights_and_top_k():
    a, b = hit("a#0"), hit("b#0")
    # b only in the second list, weighted 3: 3/61 > a's 1/61 + 3/62? 0.04918 < 0.01639 + 0.04839
    fused = reciprocal_rank_fusion([[a], [b, a]], [1.0, 3.0], k=60)
    assert [h.chunk_id for h in fused] == ["a#0", "b#0"]
    assert fused[0].score == pytest.approx(1 / 61 + 3 / 62) and fused[1].score == pytest.approx(3 / 61)
    only_second = reciprocal_rank_fusion([[a], [b]], [0.0, 1.0], k=60, top_k=1)
    assert [h.chunk_id for h in only_second] == ["b#0"]


def test_rrf_ties_prefer_the_better_best_rank_then_the_earlier_list():
    a, b = hit("a#0"), hit("b#0")
    fused = reciprocal_rank_fusion([[a], [b]], [1.0, 1.0], k=60)
    assert [h.chunk_id for h in fused] == ["a#0", "b#0"]
    assert fused[0].score == fused[1].score


def test_rrf_empty_and_mismatched_inputs():
    assert reciprocal_rank_fusion([[], []], [1.0, 1.0]) == []
    with pytest.raises(ValueError, match="2 rankings but 1 weights"):
        reciprocal_rank_fusion([[], []], [1.0])


# --- stages over a tiny index ----------------------------------------------------------------

@pytest.fixture()
def lexical_config(tmp_path, tiny_embedder_dir, tiny_corpus):
    path = write_config(tmp_path / "bm25.yaml", str(tiny_embedder_dir), tmp_path / "index",
                        retriever={"type": "bm25", "top_k": 10}, chunking={"enabled": False})
    build_index(tiny_corpus, load_config(path))
    return path


def test_registry_knows_the_new_first_stages():
    assert {"bm25", "dense", "hybrid"} <= set(names("retriever"))


def test_bm25_finds_the_english_document(lexical_config):
    result = Pipeline.from_yaml(lexical_config).ask("scurvy and bleeding gums")
    assert result.retrieved[0].source == "vitamin-c.md"
    assert "bm25" in result.timings and "embed" not in result.timings
    # only documents sharing a term come back
    assert all(h.score > 0 for h in result.retrieved)


def test_bm25_finds_the_chinese_document(lexical_config):
    result = Pipeline.from_yaml(lexical_config).ask("长城有多长？")
    assert result.retrieved[0].source == "zh/changcheng.md"


def test_bm25_query_without_terms_returns_nothing(lexical_config):
    result = Pipeline.from_yaml(lexical_config).ask("the of and")
    assert result.retrieved == []


def test_hybrid_fuses_dense_and_bm25(lexical_config):
    pipe = Pipeline.from_yaml(lexical_config, ["retriever.type=hybrid", "retriever.weights.dense=0.5"])
    result = pipe.ask("scurvy and bleeding gums")
    assert result.retrieved[0].source == "vitamin-c.md"  # BM25's clear winner survives fusion
    assert len(result.retrieved) == pipe.index.vectors.ntotal  # dense returns every chunk of a tiny index
    assert {"embed", "search", "bm25", "fuse", "retrieve", "total"} <= set(result.timings)
    scores = [h.score for h in result.retrieved]
    assert scores == sorted(scores, reverse=True)
    # the BM25 index is built once per loaded index and shared
    assert len(pipe.index.derived) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["retriever.k1=-1"], r"retriever\.k1: Input should be greater than 0"),
        (["retriever.chinese=icu"], r"retriever\.chinese"),
        (["retriever.top_k=0"], r"retriever\.top_k"),
        (["retriever.bogus=1"], r"unknown key 'retriever\.bogus'"),
        (["retriever.type=hybrid", "retriever.weights.dense=0", "retriever.weights.bm25=0"],
         "at least one weight must be > 0"),
        (["retriever.type=hybrid", "retriever.bm25.top_k=5"], r"unknown key 'retriever\.bm25\.top_k'"),
    ],
)
def test_bad_retriever_params_fail_at_load(tmp_path, overrides, message):
    path = write_config(tmp_path / "c.yaml", "bundled:all-MiniLM-L6-v2", tmp_path / "i",
                        retriever={"type": "bm25", "top_k": 10})
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


# --- anchor on the real collection -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="../shared/data/scifact is not here")
def test_bm25_reproduces_the_published_scifact_score():
    from evaluation.collection import load_collection
    from evaluation.metrics import evaluate_rankings
    from indexer.corpus import read_corpus
    from pipeline.retrievers.bm25 import LexicalIndex

    collection = load_collection(SHARED_DATA / "scifact", "test")
    docs = read_corpus(collection.corpus_path).documents
    index = LexicalIndex(LexicalParams(), [d.full_text for d in docs])
    rankings = {qid: [docs[i].doc_id for i in index.search(text, 100)[1]] for qid, text in collection.queries.items()}
    ndcg = evaluate_rankings(collection.qrels, rankings, ["ndcg@10"]).means["ndcg@10"]
    assert abs(ndcg - 0.665) <= 0.02 and abs(ndcg - 0.679) <= 0.02, ndcg
