"""``explain``: why each candidate is where it is, in the pipeline, over HTTP and in ask.py (issue 24)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from indexer.build import build_index
from pipeline.config import load_config
from pipeline.pipeline import Pipeline
from pipeline.scoring import RankSettings, explain_candidates, rank_hits
from pipeline.types import Hit
from tests.conftest import write_config

QUERY = "bone pain from low vitamin D"


def hit(chunk_id: str, doc_id: str, position: int, rank: int, score: float) -> Hit:
    return Hit(chunk_id, doc_id, f"text of {chunk_id}", f"{doc_id}.md", position, score, rank, score, rank)


CANDIDATES = [hit("a0", "a", 0, 1, 0.9), hit("a1", "a", 1, 2, 0.8), hit("b0", "b", 0, 3, 0.7),
              hit("c0", "c", 0, 4, 0.6)]


def test_reasons_top_n_per_document_cap_and_merged():
    from pipeline.context import assemble_context

    scores = np.array([0.9, 0.8, 0.7, float("nan")], dtype=np.float32)  # c0 not scored (the guard)
    settings = RankSettings(top_n=4, weight=1.0)
    ranked = rank_hits(CANDIDATES, scores, settings)
    capped = assemble_context(ranked, 2, max_chunks_per_doc=1)
    why = explain_candidates(CANDIDATES, capped, scores=scores, raw=scores, settings=settings, top_k=4, top_n=2,
                             max_chunks_per_doc=1)
    by_id = {c.chunk_id: c for c in why.candidates}
    assert [c.chunk_id for c in why.candidates] == ["a0", "a1", "b0", "c0"]  # first-stage order
    assert (by_id["a0"].final_rank, by_id["a0"].reason) == (1, None)
    assert (by_id["a1"].final_rank, by_id["a1"].reason, by_id["a1"].rerank_rank) == (None, "per_document_cap", 2)
    assert (by_id["b0"].final_rank, by_id["b0"].reason) == (2, None)
    assert by_id["c0"].reason == "top_n" and by_id["c0"].skipped and math.isnan(by_id["c0"].reranker_score)
    assert by_id["c0"].rerank_rank == 4  # a skipped candidate keeps its first-stage place
    merged = assemble_context(ranked, 2, merge_neighbours=True)
    why = explain_candidates(CANDIDATES, merged, scores=scores, raw=scores, settings=settings, top_k=4, top_n=2,
                             merge_neighbours=True)
    by_id = {c.chunk_id: c for c in why.candidates}
    assert (by_id["a1"].final_rank, by_id["a1"].reason) == (1, "merged")  # inside a0's passage
    assert (by_id["b0"].final_rank, by_id["c0"].reason) == (2, "top_n")


@pytest.fixture()
def indexed(tmp_path, tiny_embedder_dir, tiny_reranker_dir, tiny_corpus):
    def config(name, **sections):
        return write_config(tmp_path / f"{name}.yaml", str(tiny_embedder_dir), tmp_path / "index",
                            str(tiny_reranker_dir), **sections)

    build_index(tiny_corpus, load_config(config("base")))
    return config


def test_pipeline_explains_scores_mix_and_places(indexed):
    path = indexed("mixed", reranker={"weight": 0.5, "mix": "minmax"})
    pipe = Pipeline.from_yaml(path)
    result = pipe.ask(QUERY, top_k=6, top_n=3, explain=True)
    why = result.explanation
    assert (why.top_k, why.top_n, why.weight, why.mix) == (6, 3, 0.5, "minmax")
    assert [c.chunk_id for c in why.candidates] == [h.chunk_id for h in result.retrieved]
    texts = [h.text for h in result.retrieved]
    stage = pipe.reranker
    np.testing.assert_allclose([c.reranker_score for c in why.candidates], stage.score(QUERY, texts), atol=1e-6)
    np.testing.assert_allclose([c.reranker_raw for c in why.candidates], stage.logits(QUERY, texts), atol=1e-5)
    for c in why.candidates:  # no calibration file: the calibrated score is the sigmoid of the logit
        assert c.reranker_score == pytest.approx(1 / (1 + math.exp(-c.reranker_raw)), abs=1e-5)
    final = {h.chunk_id: h for h in result.reranked}
    for c in why.candidates:
        if c.chunk_id in final:
            assert c.final_rank == final[c.chunk_id].rank and c.mixed == pytest.approx(final[c.chunk_id].score)
        assert (c.final_rank is None) == (c.reason is not None)
    assert sorted(c.rerank_rank for c in why.candidates) == list(range(1, 7))
    assert pipe.ask(QUERY, top_k=6, top_n=3).explanation is None  # only when asked
    off = pipe.ask(QUERY, top_k=6, top_n=3, rerank=False, explain=True).explanation
    assert off.weight is None and all(c.reranker_score is None and c.mixed is None for c in off.candidates)
    assert [c.final_rank for c in off.candidates] == [1, 2, 3, None, None, None]
    assert [c.reason for c in off.candidates] == [None, None, None, "top_n", "top_n", "top_n"]


def test_depth_scores_only_the_best_candidates_and_keeps_the_rest_in_place(indexed):
    path = indexed("deep", reranker={"depth": 2, "weight": 1.0})
    pipe = Pipeline.from_yaml(path)
    scored = []
    score = pipe.reranker.score
    pipe.reranker.score = lambda query, texts: scored.append(len(texts)) or score(query, texts)
    result = pipe.ask(QUERY, top_k=6, top_n=6, explain=True)
    assert scored == [2]
    retrieved = [h.chunk_id for h in result.retrieved]
    assert sorted(h.chunk_id for h in result.reranked[:2]) == sorted(retrieved[:2])
    assert [h.chunk_id for h in result.reranked[2:]] == retrieved[2:], "not scored: the first stage's places"
    why = {c.chunk_id: c for c in result.explanation.candidates}
    assert all(math.isnan(why[c].reranker_score) for c in retrieved[2:])
    assert not any(math.isnan(why[c].reranker_score) for c in retrieved[:2])


def test_hybrid_candidates_show_each_retriever_and_the_fused_score(indexed):
    path = indexed("hybrid", retriever={"type": "hybrid", "top_k": 6, "depth": 8})
    why = Pipeline.from_yaml(path).ask(QUERY, explain=True).explanation
    assert why.candidates and all(c.retrievers for c in why.candidates)
    for c in why.candidates:
        assert {name for name, _, _ in c.retrievers} <= {"dense", "bm25"}
        rrf = sum(1.0 / (60 + rank) for _, rank, _ in c.retrievers)  # weights 1, rrf_k 60
        assert c.first_stage_score == pytest.approx(rrf)


def test_explain_over_http_and_in_ask_py(indexed, capsys):
    pytest.importorskip("fastapi")
    import time

    from fastapi.testclient import TestClient

    from commands.ask import main
    from commands.common import run
    from server import create_app

    path = indexed("served", context={"max_chunks_per_doc": 1})
    with TestClient(create_app({"served": load_config(path)})) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        body = client.post("/v1/ask", json={"query": QUERY, "top_k": 6, "top_n": 2, "explain": True}).json()
        explain = body["explain"]
        assert explain["max_chunks_per_doc"] == 1 and len(explain["candidates"]) == 6
        kept = {c["chunk_id"]: c["final_rank"] for c in explain["candidates"] if c["final_rank"] is not None}
        assert kept == {h["chunk_id"]: h["rank"] for h in body["reranked"]}
        first = explain["candidates"][0]
        assert set(first) == {"chunk_id", "doc_id", "source", "first_stage", "reranker", "mixed", "rerank_rank",
                              "final_rank", "reason"}
        assert set(first["reranker"]) == {"raw", "calibrated", "skipped"}
        assert {c["reason"] for c in explain["candidates"]} <= {None, "top_n", "per_document_cap", "merged"}
        assert "explain" not in client.post("/v1/ask", json={"query": QUERY}).json()
        search = client.post("/v1/search", json={"query": QUERY, "top_k": 4, "explain": True,
                                                 "filter": {"source": "*.md"}}).json()
        assert [c["first_stage"]["rank"] for c in search["explain"]["candidates"]] == [1, 2, 3, 4]
        assert search["explain"]["filter"] == "source=*.md" and search["explain"]["weight"] is None
        assert client.post("/v1/ask", json={"query": QUERY, "explain": "yes"}).status_code == 422

    assert run(main, [QUERY, "--config", str(path), "--explain", "--top-k", "6", "--top-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "Why: top_k 6 -> top_n 2; weight 1, mix score; at most 1 per document" in out
    assert run(main, [QUERY, "--config", str(path), "--json", "--explain"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["explain"]["candidates"][0]["first_stage"]["rank"] == 1


def test_the_page_script_parses():
    """The web page's script (its "why?" view included) is valid JavaScript; the browser tests run it."""
    import shutil
    import subprocess

    from tests.conftest import ROOT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    checked = subprocess.run([node, "--check", str(ROOT / "server" / "static" / "app.js")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
