"""The stage contract and the worked example of docs/architecture.md, run as written."""

from __future__ import annotations

import json
import re
import time

import pytest

from indexer.build import build_index
from pipeline import ConfigError, Pipeline, registry
from pipeline.config import load_config
from pipeline.params import StageParams
from pipeline.protocols import Embedder, Reranker, Retriever, VectorIndex
from tests.conftest import ROOT, write_config

DOC = ROOT / "docs" / "architecture.md"


@pytest.fixture()
def example_stages():
    """Execute the doc's Python block (it registers two stages); unregister them afterwards."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec", dont_inherit=True), namespace)
    yield namespace
    registry.unregister("retriever", "keyword")
    registry.unregister("reranker", "shortest-first")


def test_worked_example_runs_through_the_pipeline(example_stages, tmp_path, tiny_embedder_dir, tiny_corpus):
    config = write_config(tmp_path / "custom.yaml", str(tiny_embedder_dir), tmp_path / "index",
                          retriever={"type": "keyword", "top_k": 6},
                          context={"max_chunks_per_doc": None, "merge_neighbours": False})  # the reranker's own order
    text = config.read_text(encoding="utf-8").replace("reranker:\n  enabled: false\n",
                                                      "reranker:\n  type: shortest-first\n  top_n: 2\n")
    config.write_text(text, encoding="utf-8")
    build_index(tiny_corpus, load_config(config))

    pipe = Pipeline.from_yaml(config)
    result = pipe.ask("vitamin D deficiency bones")
    assert result.retrieved, "the keyword retriever found nothing"
    assert all(("vitamin" in h.text.lower()) or ("deficiency" in h.text.lower()) or ("bones" in h.text.lower())
               for h in result.retrieved)
    assert len(result.reranked) == 2
    lengths = [len(h.text.split()) for h in result.reranked]
    assert lengths == sorted(lengths)  # shortest first, as the toy reranker scores
    # The keyword retriever requires no embedder, so the pipeline never built one.
    assert "embedder" not in pipe.__dict__
    assert isinstance(pipe.retriever, Retriever) and isinstance(pipe.reranker, Reranker)


def test_unknown_type_lists_registered_ones_including_new(example_stages, tmp_path, tiny_embedder_dir):
    config = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "i", retriever={"type": "nope"})
    with pytest.raises(ConfigError, match=r"valid choices: bm25, dense, hybrid, keyword"):
        load_config(config)


def test_builtin_stages_follow_the_contract(tiny_config, tiny_corpus):
    build_index(tiny_corpus, load_config(tiny_config))
    pipe = Pipeline.from_yaml(tiny_config).load()
    assert isinstance(pipe.embedder, Embedder)
    assert isinstance(pipe.index.vectors, VectorIndex)
    assert isinstance(pipe.retriever, Retriever)
    assert isinstance(pipe.reranker, Reranker)


def test_registration_rejects_a_stage_without_params_or_requires():
    class NoParams:
        requires = ("index",)

    class NoRequires:
        class Params:
            pass

    with pytest.raises(TypeError, match="Params"):
        registry.register("retriever", "bad", NoParams)
    with pytest.raises(TypeError, match="requires"):
        registry.register("retriever", "bad", NoRequires)
    NoParams.Params = NoRequires.Params
    with pytest.raises(ValueError, match="already registered"):
        registry.register("retriever", "dense", NoParams)


def test_relative_paths_in_a_config_follow_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    (folder / "models" / "mine").mkdir(parents=True)
    config = folder / "c.yaml"
    config.write_text(
        "embedder: {type: sentence-transformers, model: BAAI/bge-m3}\n"
        "index: {type: faiss, path: ../idx}\n"
        "retriever: {type: dense}\n"
        "reranker: {type: cross-encoder, model: models/mine}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path / "conf" / "models")  # anywhere else
    cfg = load_config(config, ["ray.output=out"])
    assert cfg.index.params.path == str(tmp_path / "idx")
    assert cfg.reranker.params.model == str(folder / "models" / "mine")
    assert cfg.embedder.params.model == "BAAI/bge-m3"  # a hub id stays one
    assert cfg.ray.output == "out"  # the command line's paths follow the working directory


def test_top_k_zero_is_an_error_not_the_default(tiny_config, tiny_corpus):
    from pipeline import InputError

    build_index(tiny_corpus, load_config(tiny_config))
    pipe = Pipeline.from_yaml(tiny_config)
    for bad in ({"top_k": 0}, {"top_n": 0}, {"top_k": -1}, {"weight": 1.5}):
        with pytest.raises(InputError):
            pipe.ask("vitamin D", **bad)
    assert pipe.ask("vitamin D", rerank=False).reranked is None


@pytest.mark.parametrize("script", ["ask.py", "build_index.py", "evaluate.py", "train_reranker.py"])
def test_a_script_outside_the_environment_says_how_to_set_it_up(script, tmp_path):
    import subprocess
    import sys

    # -S: no site-packages, as a Python without the project installed; run from another folder
    done = subprocess.run([sys.executable, "-S", str(ROOT / "scripts" / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "make setup" in done.stderr and "pip install -e ." in done.stderr


def _example_config(tmp_path, tiny_embedder_dir):
    config = write_config(tmp_path / "custom.yaml", str(tiny_embedder_dir), tmp_path / "index",
                          retriever={"type": "keyword", "top_k": 6},
                          context={"max_chunks_per_doc": None, "merge_neighbours": False})
    text = config.read_text(encoding="utf-8").replace("reranker:\n  enabled: false\n",
                                                      "reranker:\n  type: shortest-first\n  top_n: 2\n")
    config.write_text(text, encoding="utf-8")
    return config


def test_worked_example_runs_under_the_server(example_stages, tmp_path, tiny_embedder_dir, tiny_corpus):
    """The example reranker defines score() only; the server's queue and routes need nothing more."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from server import create_app

    config = _example_config(tmp_path, tiny_embedder_dir)
    build_index(tiny_corpus, load_config(config))
    with TestClient(create_app({"custom": load_config(config)})) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        body = client.post("/v1/ask", json={"query": "vitamin D deficiency bones"}).json()
        lengths = [len(h["text"].split()) for h in body["reranked"]]
        assert len(lengths) == 2 and lengths == sorted(lengths) and body["notes"] == []
        docs = ["a long passage of seven words here", "short one", "three words here"]
        ranked = client.post("/v1/rerank", json={"query": "q", "documents": docs}).json()["results"]
        assert [r["index"] for r in ranked] == [1, 2, 0]
        assert ranked[0]["relevance_score"] == pytest.approx(1 / 3)


def test_worked_example_runs_under_the_evaluator(example_stages, tmp_path, tiny_embedder_dir):
    """rag-eval shares the example's scores through its cache and ranks with the config's settings."""
    from evaluation.collection import load_collection
    from evaluation.runner import ConfigSpec, evaluate_configs

    root = tmp_path / "collection"
    (root / "qrels").mkdir(parents=True)
    docs = {"d1": "Vitamin D deficiency softens bones.", "d2": "Vitamin D comes from sunlight on the skin.",
            "d3": "Iron deficiency causes fatigue and pale skin in many people who lack it."}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                               for k, v in docs.items()), encoding="utf-8")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "vitamin D deficiency"}) + "\n",
                                        encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    config = _example_config(tmp_path, tiny_embedder_dir)
    report = evaluate_configs(load_collection(root), [ConfigSpec("custom", config)], tmp_path / "cache")
    record = report.results[0].records["q1"]
    assert record.final == ["d1", "d2", "d3"]  # shortest first (5, 8, 14 words), as the toy scores
    assert set(record.first_stage) == {"d1", "d2", "d3"} and report.reranker_pairs["computed"] == 3


def test_registration_rejects_a_reranker_outside_the_scorer_contract():
    from pipeline.params import RerankerParams
    from pipeline.protocols import Scorer

    class PlainParams:
        class Params(StageParams):
            top_n: int = 3

        def score(self, query, passages):
            return [0.0] * len(passages)

    class NoDefaults:
        Params = RerankerParams

        def load(self):
            return self

        def score(self, query, passages):
            return [0.0] * len(passages)

    with pytest.raises(TypeError, match="RerankerParams"):
        registry.register("reranker", "bad", PlainParams)
    with pytest.raises(TypeError, match="lacks score_many, skip_note, describe: subclass pipeline.protocols.Scorer"):
        registry.register("reranker", "bad", NoDefaults)
    good = type("Good", (Scorer,), {"Params": RerankerParams, "load": NoDefaults.load, "score": NoDefaults.score})
    registry.register("reranker", "good", good)
    registry.unregister("reranker", "good")
    assert good().skip_note("q", ["p"]) is None and good().describe() == {"type": "Good"}
