"""The scripts end to end on the bundled sample corpus with the bundled model, and their errors."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_config

OFFLINE = ROOT / "configs" / "offline.yaml"


COMMANDS = {"build_index": "build", "ask": "ask", "evaluate": "evaluate", "train_reranker": "train"}


def load_script(name: str):
    """The command behind ``scripts/<name>.py`` (the script is a wrapper around it)."""
    return importlib.import_module(f"commands.{COMMANDS[name]}")


build_script = load_script("build_index")
ask_script = load_script("ask")


def run_script(module, argv):
    from commands.common import run

    return run(module.main, argv)


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    """data/ indexed with configs/offline.yaml (bundled all-MiniLM-L6-v2), once for this module."""
    index = tmp_path_factory.mktemp("sample") / "index"
    assert run_script(build_script, ["data/", "--index", str(index)]) == 0
    return index


@pytest.mark.slow
def test_build_reports_counts(sample_index, capsys):
    manifest_files = list(sample_index.glob("v-*/manifest.json"))
    assert len(manifest_files) == 1
    manifest = json.loads(manifest_files[0].read_text())
    assert manifest["counts"]["documents"] >= 40
    assert manifest["embedder"]["model"] == "bundled:all-MiniLM-L6-v2" and manifest["embedder"]["dimension"] == 384


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how do I install python packages", "tech/installing-python-packages-with-pip.md"),
        ("维生素D缺乏有什么症状", "zh/vitamin-d-queshao.md"),
    ],
)
def test_ask_json_finds_the_answer(sample_index, capsys, query, expected):
    assert run_script(ask_script, [query, "--index", str(sample_index), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == query
    assert len(out["retrieved"]) == 50 and out["retrieved"][0]["source"] == expected
    assert len(out["reranked"]) == 5 and out["reranked"][0]["source"] == expected
    assert all(0.0 <= h["score"] <= 1.0 for h in out["reranked"])
    assert {"embed", "search", "rerank", "total"} <= set(out["timings_ms"])


@pytest.mark.slow
def test_vitamin_d_demo_keeps_the_answer_first_and_the_traps_down(sample_index, capsys):
    """The README's demo question: the first stage puts the deficiency page first, the toxicity page
    second and the vitamin C deficiency page fifth. The shipped reranker (models/e5-reranker) keeps the
    deficiency page first with a calibrated score of at least 0.5, and lifts neither trap above where
    the first stage had it."""
    query = "symptoms of vitamin D deficiency"
    assert run_script(ask_script, [query, "--index", str(sample_index), "--json", "--explain"]) == 0
    out = json.loads(capsys.readouterr().out)
    retrieved = [h["source"] for h in out["retrieved"]]
    reranked = [h["source"] for h in out["reranked"]]
    assert retrieved[0] == "health/vitamin-d-deficiency.md"
    assert reranked[0] == "health/vitamin-d-deficiency.md", reranked
    for trap in ("health/vitamin-d-toxicity.md", "health/vitamin-c-deficiency.md"):
        if trap in reranked:
            assert reranked.index(trap) >= retrieved.index(trap), (trap, retrieved[:6], reranked)
    first = next(c for c in out["explain"]["candidates"] if c["final_rank"] == 1)
    assert first["reranker"]["calibrated"] >= 0.5, first  # the model's own probability, before the mix
    # the unrelated pages stay out: every kept page is about vitamin D or a deficiency
    assert all("vitamin" in s or "deficiency" in s or "queshao" in s for s in reranked), reranked


@pytest.mark.slow
def test_ask_side_by_side_with_a_reranker(sample_index, tiny_reranker_dir, capsys):
    argv = [
        "symptoms of vitamin D deficiency", "--index", str(sample_index),
        "--set", "reranker.enabled=true", "--set", f"reranker.model={tiny_reranker_dir}",
        "--set", "reranker.max_length=128",
    ]
    assert run_script(ask_script, argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["reranked"]) == 5 and all(0 < h["score"] < 1 for h in out["reranked"])
    assert all(h["rank_change"] == h["retrieval_rank"] - h["rank"] for h in out["reranked"])
    assert run_script(ask_script, argv + ["--show", "5"]) == 0
    text = capsys.readouterr().out
    assert "retrieved (top 50, cosine)" in text and "reranked (cross-encoder, 0..1)" in text
    assert "(was #" in text and "rerank" in text.split("time:")[-1]


def test_errors_exit_non_zero_with_one_line(tmp_path, capsys):
    cases = [
        (ask_script, ["q", "--index", str(tmp_path / "none")], 3, "no index at"),
        (ask_script, ["", "--index", str(tmp_path / "none")], 2, "query is empty"),
        (ask_script, ["q", "--set", "retriever.topk=3"], 2, "unknown key 'retriever.topk'"),
        (ask_script, ["q", "--config", str(tmp_path / "missing.yaml")], 2, "config file not found"),
        (ask_script, ["q", "--top-k", "0"], 2, "--top-k must be a positive number"),
        (build_script, [str(tmp_path / "no-corpus"), "--index", str(tmp_path / "i")], 3, "does not exist"),
    ]
    for module, argv, code, message in cases:
        assert run_script(module, argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unloadable_model_is_a_clean_error_in_a_subprocess(tmp_path, tiny_corpus):
    config = write_config(tmp_path / "c.yaml", "BAAI/bge-m3", tmp_path / "index")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_index.py"), str(tiny_corpus), "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 3
    assert "embedder.model: cannot load model 'BAAI/bge-m3'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "index" / "CURRENT").exists()
