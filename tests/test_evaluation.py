"""Evaluation: metric plumbing on hand-made collections, chunk-to-document folding, config specs,
the reranker score cache, and scripts/evaluate.py end to end."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, write_config

from evaluation.collection import load_collection
from evaluation.metrics import compare_rankings, evaluate_rankings, fold_to_documents, ranking_to_run
from evaluation.runner import ScoreCache, latency_summary, parse_config_specs
from pipeline import ConfigError, CorpusError
from pipeline.types import Hit

LOG2_3 = 1.584962500721156  # log2(3)


COMMANDS = {"build_index": "build", "ask": "ask", "evaluate": "evaluate", "train_reranker": "train"}


def load_script(name: str):
    """The command behind ``scripts/<name>.py`` (the script is a wrapper around it)."""
    return importlib.import_module(f"commands.{COMMANDS[name]}")


def hit(chunk_id: str, doc_id: str, score: float, rank: int) -> Hit:
    return Hit(chunk_id, doc_id, "", "", 0, score, rank, score, rank)


# --- metrics worked out by hand ----------------------------------------------------------------

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}, "q3": {"d4": 2, "d5": 1}, "q4": {"d6": 1}}
RANKINGS = {
    "q1": ["d9", "d1"],  # relevant at rank 2
    "q2": ["d2", "d8", "d3"],  # both relevant, ranks 1 and 3
    "q3": ["d5", "d4"],  # graded: the better document second
    "q4": [],  # nothing retrieved
}


def test_metrics_match_hand_computed_values():
    table = evaluate_rankings(QRELS, RANKINGS, ["ndcg@10", "mrr@10", "recall@5", "recall@1"])
    ndcg = {
        "q1": (1 / LOG2_3) / 1,
        "q2": (1 + 1 / 2) / (1 + 1 / LOG2_3),  # log2(4) = 2
        "q3": (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3),  # linear gain, as trec_eval/BEIR
        "q4": 0.0,
    }
    for qid, value in ndcg.items():
        assert table.per_query["ndcg@10"][qid] == pytest.approx(value)
    assert table.means["ndcg@10"] == pytest.approx(sum(ndcg.values()) / 4)
    assert table.per_query["mrr@10"] == pytest.approx({"q1": 0.5, "q2": 1.0, "q3": 1.0, "q4": 0.0})
    assert table.means["mrr@10"] == pytest.approx(2.5 / 4)
    assert table.means["recall@5"] == pytest.approx(3 / 4)
    assert table.per_query["recall@1"] == pytest.approx({"q1": 0.0, "q2": 0.5, "q3": 0.5, "q4": 0.0})


def test_a_query_missing_from_the_run_scores_zero():
    table = evaluate_rankings(QRELS, {"q1": ["d1"]}, ["ndcg@10"])
    assert table.per_query["ndcg@10"] == {"q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 0.0}
    assert table.means["ndcg@10"] == pytest.approx(0.25)
    assert evaluate_rankings(QRELS, {}, ["ndcg@10"]).means == {"ndcg@10": 0.0}


def test_run_scores_keep_the_pipeline_order():
    assert ranking_to_run(["b", "a", "c"]) == {"b": 3.0, "a": 2.0, "c": 1.0}


def test_paired_test_tells_identical_from_different_runs():
    better = {"q1": ["d1"], "q2": ["d2", "d3"], "q3": ["d4", "d5"], "q4": ["d6"]}
    comparisons = compare_rankings(QRELS, {"base": RANKINGS, "same": RANKINGS, "better": better}, ["ndcg@10"])
    by_pair = {(c.baseline, c.other): c for c in comparisons}
    assert set(by_pair) == {("base", "same"), ("base", "better"), ("same", "better")}
    same = by_pair[("base", "same")]
    assert same.delta == 0 and not same.significant and (same.wins, same.ties, same.losses) == (0, 4, 0)
    gain = by_pair[("base", "better")]
    assert gain.other_mean == pytest.approx(1.0) and gain.delta > 0 and (gain.wins, gain.losses) == (4, 0)
    assert 0 <= gain.p_value <= 1


# --- folding ---------------------------------------------------------------------------------

def test_folding_keeps_each_documents_best_chunk_in_rank_order():
    hits = [hit("a#2", "a", 0.9, 1), hit("b#0", "b", 0.8, 2), hit("a#0", "a", 0.7, 3), hit("c#1", "c", 0.6, 4),
            hit("b#3", "b", 0.5, 5)]
    assert fold_to_documents(hits) == [("a", 0.9), ("b", 0.8), ("c", 0.6)]
    assert fold_to_documents([]) == []


def test_folded_chunks_are_scored_as_documents():
    hits = [hit("x#0", "x", 0.9, 1), hit("x#1", "x", 0.8, 2), hit("d1#0", "d1", 0.7, 3)]
    docs = [d for d, _ in fold_to_documents(hits)]
    # d1 is the second document, not the third chunk: MRR 1/2, not 1/3
    assert evaluate_rankings({"q1": {"d1": 1}}, {"q1": docs}, ["mrr@10"]).means["mrr@10"] == pytest.approx(0.5)


# --- collection reading ------------------------------------------------------------------------

def write_collection(root: Path, docs: dict[str, tuple[str, str]], queries: dict[str, str], qrels: list[tuple]) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, (title, text) in docs.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, row)) for row in qrels]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_collection_keeps_judged_queries_and_relevant_documents(tmp_path):
    root = write_collection(tmp_path / "c", {"d1": ("", "x")}, {"q1": "one", "q2": "two", "q3": "three"},
                            [("q1", "d1", 1), ("q2", "d1", 0), ("q3", "d2", 2)])
    c = load_collection(root)
    assert c.name == "c" and c.split == "test"
    assert c.queries == {"q1": "one", "q3": "three"}  # q2 has only a score-0 judgement
    assert c.qrels == {"q1": {"d1": 1}, "q3": {"d2": 2}}


def test_sampled_collection_is_a_seeded_subset_in_file_order(tmp_path):
    queries = {f"q{i}": f"query {i}" for i in range(20)}
    root = write_collection(tmp_path / "c", {"d1": ("", "x")}, queries, [(q, "d1", 1) for q in queries])
    c = load_collection(root)
    a, b, other = c.sample(5, seed=1), c.sample(5, seed=1), c.sample(5, seed=2)
    assert list(a.queries) == list(b.queries) and set(a.queries) != set(other.queries)
    assert len(a.queries) == 5 and set(a.qrels) == set(a.queries) and a.subset_of == 20
    assert list(a.queries) == [q for q in queries if q in a.queries]
    assert c.sample(50) is c and c.subset_of is None


def test_collection_errors_name_the_fix(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_collection(tmp_path / "nope")
    root = write_collection(tmp_path / "c", {"d1": ("", "x")}, {"q1": "one"}, [("q1", "d1", 1)])
    with pytest.raises(CorpusError, match="no qrels for split 'dev'.*splits found: test"):
        load_collection(root, "dev")


# --- config specs ----------------------------------------------------------------------------

def test_overrides_apply_to_all_or_to_one_named_config():
    specs = parse_config_specs(["a.yaml", "b=x/b.yaml"], ["retriever.top_k=20", "b:reranker.model=m:1"])
    assert [(s.name, str(s.path), s.overrides) for s in specs] == [
        ("a", "a.yaml", ("retriever.top_k=20",)),
        ("b", "x/b.yaml", ("retriever.top_k=20", "reranker.model=m:1")),
    ]


@pytest.mark.parametrize(
    ("configs", "overrides", "message"),
    [
        (["a.yaml", "x/a.yaml"], [], "two configs are named 'a'"),
        (["a.yaml"], ["zz:retriever.top_k=3"], "no config named 'zz'"),
    ],
)
def test_bad_config_specs(configs, overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config_specs(configs, overrides)


def test_latency_summary_in_milliseconds():
    summary = latency_summary([{"total": 0.001 * i, "rerank": 0.002} for i in range(1, 101)])
    assert summary["total"]["p50"] == pytest.approx(50.5)
    assert summary["total"]["p95"] == pytest.approx(95.05)
    assert summary["rerank"] == pytest.approx({"p50": 2.0, "p95": 2.0, "mean": 2.0})


# --- reranker score cache ----------------------------------------------------------------------

def test_each_query_passage_pair_is_scored_once(tiny_reranker_dir):
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker

    reranker = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu"))
    cache = ScoreCache()
    first, cost = cache.scores(reranker, "vitamin d", ["bone pain", "scurvy", "bone pain"])
    assert cache.computed == 2 and cache.reused == 1 and cost > 0
    again, _ = cache.scores(reranker, "vitamin d", ["scurvy", "iron", "bone pain"])
    assert cache.computed == 3 and cache.reused == 3
    assert again[0] == first[1] and again[2] == first[0]
    assert list(again) == pytest.approx(list(reranker.score("vitamin d", ["scurvy", "iron", "bone pain"])), abs=1e-6)


# --- scripts/evaluate.py end to end ------------------------------------------------------------

TINY_COLLECTION = {
    "docs": {
        "d1": ("Zebra", "The zebra is a striped horse of Africa."),
        "d2": ("Lion", "The lion hunts at night on the savanna."),
        "d3": ("Tea", "Green tea is brewed from leaves of the tea plant."),
        "d4": ("Coffee", "Coffee beans are roasted seeds; espresso is strong coffee."),
        "d5": ("长城", "长城是中国古代的军事防御工程。"),
    },
    "queries": {"q1": "zebra stripes", "q2": "lion", "q3": "espresso", "q4": "长城"},
    # q2's judged document is not the lion one: BM25 cannot find it
    "qrels": [("q1", "d1", 1), ("q2", "d3", 1), ("q3", "d4", 1), ("q4", "d5", 1)],
}


@pytest.fixture()
def tiny_collection(tmp_path) -> Path:
    t = TINY_COLLECTION
    return write_collection(tmp_path / "tiny", t["docs"], t["queries"], t["qrels"])


@pytest.mark.slow
def test_evaluate_script_end_to_end(tmp_path, tiny_collection, tiny_reranker_dir, capsys):
    evaluate = load_script("evaluate")
    model = "bundled:all-MiniLM-L6-v2"
    configs = []
    for name, retriever, reranker in [
        ("dense", {"type": "dense", "top_k": 5}, None),
        ("bm25", {"type": "bm25", "top_k": 5}, None),
        ("hybrid", {"type": "hybrid", "top_k": 5, "depth": 5}, None),
        ("bm25-rr", {"type": "bm25", "top_k": 5}, str(tiny_reranker_dir)),
        ("hybrid-rr", {"type": "hybrid", "top_k": 5, "depth": 5}, str(tiny_reranker_dir)),
        ("bm25-mixed", {"type": "bm25", "top_k": 5}, str(tiny_reranker_dir)),
    ]:
        path = write_config(tmp_path / f"{name}.yaml", model, tmp_path / "unused", reranker, retriever=retriever,
                            chunking={"enabled": False})
        configs += ["--config", str(path)]
    out = tmp_path / "out"
    code = evaluate.main(["--data", str(tiny_collection), *configs, "--out", str(out),
                          "--cache", str(tmp_path / "cache"),
                          "--set", "bm25-rr:reranker.top_n=2", "--set", "bm25-mixed:reranker.weight=0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "results.json" in printed

    data = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in data["configs"]] == ["dense", "bm25", "hybrid", "bm25-rr", "hybrid-rr", "bm25-mixed"]
    assert data["collection"] == {"name": "tiny", "path": str(tiny_collection), "split": "test", "queries": 4,
                                  "judgements": 4, "sampled_from": None}
    # one index for all five configs (same corpus, embedder and chunking), built once
    assert len({c["index"]["digest"] for c in data["configs"]}) == 1
    assert [c["index"]["build_seconds"] > 0 for c in data["configs"]] == [True] + [False] * 5
    bm25 = next(c for c in data["configs"] if c["name"] == "bm25")
    # q1, q3, q4 found at rank 1; q2's judged document shares no term with the query
    assert bm25["metrics"]["ndcg@10"] == pytest.approx(0.75)
    assert bm25["metrics"]["mrr@10"] == pytest.approx(0.75)
    assert bm25["metrics"]["recall@5"] == pytest.approx(0.75)
    assert bm25["metrics"]["first_stage_recall@50"] == pytest.approx(0.75)
    for config in data["configs"]:
        assert set(config["metrics"]) == {"ndcg@10", "mrr@10", "recall@5", "recall@context", "precision@context",
                                          "first_stage_recall@5", "first_stage_recall@50"}
        assert all(0 <= v <= 1 for v in config["metrics"].values())
        assert config["latency_ms"]["total"]["p95"] >= config["latency_ms"]["total"]["p50"] >= 0
    rr = next(c for c in data["configs"] if c["name"] == "bm25-rr")
    assert {"bm25", "rerank"} <= set(rr["latency_ms"])
    # the reranker reorders the same candidates: first-stage recall is unchanged
    assert rr["metrics"]["first_stage_recall@50"] == bm25["metrics"]["first_stage_recall@50"]
    # the reranked configs share pairs: scored once, reused after; bm25-mixed (same model, weight 0)
    # scores nothing new, and with weight 0 it keeps BM25's order
    mixed = next(c for c in data["configs"] if c["name"] == "bm25-mixed")
    context = ("recall@context", "precision@context")  # top_n differs (bm25 alone keeps its own)
    assert mixed["metrics"] == bm25["metrics"] | {m: mixed["metrics"][m] for m in context}
    assert data["reranker_pairs"]["reused"] > 0
    assert len(data["comparisons"]) == 15 * 3
    assert all(0 <= c["p_value"] <= 1 or c["p_value"] != c["p_value"] for c in data["comparisons"])

    rows = (out / "per_query.tsv").read_text().splitlines()
    assert rows[0].startswith("config\tquery_id\tndcg@10") and len(rows) == 1 + 6 * 4
    assert "| bm25 | 0.7500 |" in (out / "results.md").read_text()
    assert (out / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"

    # a second run reuses the cached index
    code = evaluate.main(["--data", str(tiny_collection), "--config", str(tmp_path / "bm25.yaml"), "--out",
                          str(tmp_path / "out2"), "--cache", str(tmp_path / "cache")])
    assert code == 0
    again = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert again["configs"][0]["index"]["build_seconds"] == 0
    assert again["configs"][0]["metrics"]["ndcg@10"] == pytest.approx(0.75)


def test_evaluate_script_errors_exit_with_codes(tmp_path, tiny_collection, capsys):
    from commands.common import run

    evaluate = load_script("evaluate")
    config = write_config(tmp_path / "rr.yaml", "bundled:all-MiniLM-L6-v2", tmp_path / "i",
                          str(tmp_path / "no-such-reranker"))
    cache = str(tmp_path / "cache")
    assert run(evaluate.main, ["--data", str(tmp_path / "missing"), "--config", str(config), "--cache", cache]) == 3
    assert "does not exist" in capsys.readouterr().err
    # a missing reranker is reported before any index is built
    assert run(evaluate.main, ["--data", str(tiny_collection), "--config", str(config), "--cache", cache]) == 3
    assert "no-such-reranker" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    assert run(evaluate.main, ["--data", str(tiny_collection), "--config", str(config), "--cache", cache,
                               "--set", "nope:retriever.top_k=3"]) == 2
    assert "no config named 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="../shared/data/scifact is not here")
def test_scifact_collection_counts():
    c = load_collection(SHARED_DATA / "scifact", "test")
    assert len(c.queries) == 300 and sum(len(d) for d in c.qrels.values()) == 339


def test_configs_differing_only_in_mix_each_rank_with_their_own(tmp_path, tiny_collection, tiny_embedder_dir,
                                                                tiny_reranker_dir):
    """Evaluated together, two configs that differ only in reranker.mix share scores, not the mix."""
    from evaluation.runner import ConfigSpec, evaluate_configs

    specs = []
    for mix in ("score", "minmax"):
        path = write_config(tmp_path / f"{mix}.yaml", str(tiny_embedder_dir), tmp_path / "unused",
                            str(tiny_reranker_dir), retriever={"type": "dense", "top_k": 5},
                            reranker={"mix": mix, "weight": 0.5, "top_n": 5}, chunking={"enabled": False})
        specs.append(ConfigSpec(mix, path))
    cache = tmp_path / "cache"
    together = evaluate_configs(load_collection(tiny_collection), specs, cache)
    assert together.reranker_pairs["reused"] > 0  # the second config scored nothing new
    finals = {r.name: {q: rec.final for q, rec in r.records.items()} for r in together.results}
    for spec in specs:
        alone = evaluate_configs(load_collection(tiny_collection), [spec], cache).results[0]
        assert {q: rec.final for q, rec in alone.records.items()} == finals[spec.name], spec.name
    assert finals["score"] != finals["minmax"]  # the mix matters here, so sharing it would show


def test_cached_scorer_scores_through_the_cache_and_forwards_other_options(tiny_reranker_dir):
    import numpy as np

    from evaluation.runner import CachedScorer
    from pipeline.protocols import Scorer
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker
    from pipeline.types import ScoreOptions

    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu"))
    cached = CachedScorer(stage, ScoreCache())
    assert isinstance(cached, Scorer) and cached.describe()["type"] == "cross-encoder"
    passages = ["vitamin D", "bone pain"]
    np.testing.assert_allclose(cached.score_many([("q", passages)])[0], stage.score("q", passages), atol=1e-6)
    assert cached.cache.computed == 2 and cached.score("q", passages) is not None and cached.cache.reused == 2
    raw = cached.score_many([("q", passages)], ScoreOptions(raw=True))[0]
    np.testing.assert_allclose(raw, stage.logits("q", passages), atol=1e-6)
    assert cached.cache.computed == 2  # the raw scores did not go into the cache
