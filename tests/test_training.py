"""Reranker training: mining groups from a tiny BEIR collection, a short run that learns, the saved
model going through the reranker stage, resuming from a checkpoint, and the command's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_config

import training
from pipeline.config import load_config
from pipeline.errors import CorpusError, InputError

LONG = " ".join(["vitamin", "deficiency", "causes", "bone", "pain", "and", "muscle", "weakness"] * 5)
DOCS = {
    "vit-d": ("Vitamin D deficiency", "Low vitamin D causes bone pain, muscle weakness and tiredness. Sunlight helps."),
    "vit-c": ("Vitamin C deficiency", "Scurvy brings bleeding gums, bruises and slow wound healing."),
    "iron": ("Iron deficiency anemia", "Iron deficiency anemia makes people tired and pale; red meat supplies iron."),
    "python": ("Python", "Python is a programming language. Install packages with pip install."),
    "snake": ("Ball python", "The ball python is a snake from Africa."),
    "wall": ("长城", "长城是中国古代修建的军事防御工程，全长两万多公里。"),
    "long": ("Vitamin D and the bone pain", LONG),
}
QUERIES = {
    "q1": ("bone pain and muscle weakness", "vit-d"),
    "q2": ("bleeding gums and bruises", "vit-c"),
    "q3": ("tired and pale from anemia", "iron"),
    "q4": ("install packages with pip", "python"),
    "q5": ("a snake from Africa", "snake"),
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine, two threads spin-wait and run tiny models ~7x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def collection(tmp_path) -> Path:
    root = tmp_path / "tiny-beir"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, (text, _) in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, (_, d) in QUERIES.items()]
    (root / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture()
def config(tmp_path, tiny_embedder_dir):
    path = write_config(tmp_path / "mine.yaml", str(tiny_embedder_dir), tmp_path / "unused-index",
                        chunking={"enabled": False})
    return load_config(path)


def _settings(tmp_path, base, **kw) -> training.TrainSettings:
    defaults = dict(base=str(base), out=tmp_path / "out", work_dir=tmp_path / "ckpt", epochs=1, batch_size=2,
                    learning_rate=1e-2, warmup_ratio=0.0, max_length=64, save_steps=1000, device="cpu",
                    progress=False)
    return training.TrainSettings(**{**defaults, **kw})


def test_groups_exclude_judged_positives_and_hold_back_dev(collection, config, tmp_path):
    data = training.load_groups(collection, "train", config, cache_dir=tmp_path / "cache", num_negatives=3,
                                mine_top_k=6, dev_queries=1, dev_top_k=4, pseudo_queries=5, seed=3)
    labelled = [g for g in data.train if g.origin == "qrels"]
    assert len(labelled) == 4 and len(data.dev) == 1
    dev_query = data.dev[0].query
    assert dev_query not in {g.query for g in labelled}, "a dev query must not be trained on"
    for group in labelled:
        positive_id = next(d for q, d in QUERIES.values() if q == group.query)
        assert group.positive == training.document_text(*DOCS[positive_id])
        assert group.positive not in group.negatives and len(group.negatives) == 3
    # Pseudo-queries: only documents with a long enough title and text; no title in any passage.
    pseudo = [g for g in data.train if g.origin == "pseudo"]
    assert [g.query for g in pseudo] == ["Vitamin D and the bone pain"]
    assert pseudo[0].positive == LONG and all(n in {t for _, t in DOCS.values()} for n in pseudo[0].negatives)
    assert len(data.dev[0].candidates) == 4
    assert data.sources[0]["labelled_groups"] == 4
    dev_ids = training.dev_query_ids(training.read_collection(collection, "train"), 1, seed=3)
    assert [d.query_id for d in data.dev] == dev_ids, "measuring on dev must see the queries training held back"


def test_interpolate_scales_each_list_then_mixes():
    ce, first = [0.9, 0.1, 0.5], [10.0, 30.0, 20.0]
    assert training.interpolate(ce, first, 0.0) == pytest.approx([1.0, 0.0, 0.5])
    assert training.interpolate(ce, first, 1.0) == pytest.approx([0.0, 1.0, 0.5])
    assert training.interpolate(ce, first, 0.25) == pytest.approx([0.75, 0.25, 0.5])
    assert training.interpolate([0.3, 0.3], [2.0, 1.0], 0.5) == pytest.approx([0.5, 0.0])
    assert training.interpolate([], [], 0.5) == []


def test_jsonl_groups_and_bad_input(tmp_path):
    folder = tmp_path / "groups"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"]}) + "\n")
    data = training.load_groups(folder, "train", None, cache_dir=tmp_path)
    assert data.train == [training.TrainingGroup("q", "p", ("n1", "n2"), "jsonl")]
    (folder / "b.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    with pytest.raises(InputError, match=r"b.jsonl:1: expected an object with keys query, positive, negatives"):
        training.load_groups(folder, "train", None, cache_dir=tmp_path)
    with pytest.raises(CorpusError, match="neither a BEIR collection"):
        training.load_groups(tmp_path / "missing", "train", None, cache_dir=tmp_path)


def _margin(model, groups) -> float:
    """Mean over groups of score(positive) - mean score(negatives)."""
    margins = []
    for g in groups:
        scores = model.predict([(g.query, p) for p in (g.positive, *g.negatives)], show_progress_bar=False)
        margins.append(float(scores[0] - np.mean(scores[1:])))
    return float(np.mean(margins))


def test_short_run_lowers_loss_and_ranks_positives_higher(collection, config, tiny_reranker_dir, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    data = training.load_groups(collection, "train", config, cache_dir=tmp_path / "cache", num_negatives=3,
                                mine_top_k=6, seed=0)
    before = _margin(CrossEncoder(str(tiny_reranker_dir), device="cpu"), data.train)
    model, report = training.train_reranker(data.train * 24, [], _settings(tmp_path, tiny_reranker_dir))
    assert report.steps == 60 and report.train_pairs == report.steps * 2 * 4
    # Group-wise loss starts at ln(group size) (a uniform guess) and must fall below it.
    assert np.mean(report.last_losses) < np.mean(report.first_losses) < np.log(4) + 0.05
    assert _margin(model, data.train) > before + 0.1


def test_bce_trains_on_flattened_pairs(collection, config, tiny_reranker_dir, tmp_path):
    data = training.load_groups(collection, "train", config, cache_dir=tmp_path / "cache", num_negatives=3,
                                mine_top_k=6, seed=0)
    _, report = training.train_reranker(data.train, [], _settings(tmp_path, tiny_reranker_dir, loss="bce",
                                                                  max_steps=3))
    # A BCE step holds as many pairs as a group-wise one: batch_size groups x (1 + negatives).
    assert report.steps == 3 and report.train_pairs == 3 * 2 * 4
    assert report.first_losses and all(np.isfinite(report.first_losses))


def test_saved_model_round_trips_through_the_reranker_stage(collection, config, tiny_reranker_dir, tmp_path):
    from safetensors import safe_open
    from sentence_transformers.cross_encoder import CrossEncoder

    from pipeline.rerankers.cross_encoder import CrossEncoderReranker
    from pipeline.types import Hit

    data = training.load_groups(collection, "train", config, cache_dir=tmp_path / "cache", num_negatives=3,
                                mine_top_k=6, dev_queries=1, dev_top_k=5, seed=0)
    settings = _settings(tmp_path, tiny_reranker_dir, epochs=1, save_steps=6)
    model, report = training.train_reranker(data.train * 6, data.dev, settings)
    assert report.dev_history and report.best_checkpoint is not None
    out = tmp_path / "saved"
    size = training.save_compact(model, out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert size == (out / "model.safetensors").stat().st_size
    loaded = CrossEncoder(str(out), device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32

    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(out), top_n=3, device="cpu", max_length=64))
    group = data.train[0]
    passages = [*group.negatives, group.positive]
    hits = [Hit(f"c{i}", f"d{i}", t, "", 0, 1.0 - i / 10, i + 1, 1.0 - i / 10, i + 1) for i, t in enumerate(passages)]
    reranked = stage.rerank(group.query, hits)
    expected = model.predict([(group.query, p) for p in passages], show_progress_bar=False)
    assert [h.doc_id for h in reranked] == [f"d{i}" for i in np.argsort(-expected, kind="stable")[:3]]


def test_resumes_from_the_last_checkpoint(collection, config, tiny_reranker_dir, tmp_path):
    data = training.load_groups(collection, "train", config, cache_dir=tmp_path / "cache", num_negatives=2,
                                mine_top_k=6, seed=0)
    _, first = training.train_reranker(data.train, [], _settings(tmp_path, tiny_reranker_dir, max_steps=2,
                                                                  save_steps=2))
    assert (tmp_path / "ckpt" / "checkpoint-2").is_dir()
    clock = tmp_path / "ckpt" / "checkpoint-2" / "elapsed.json"
    assert 0 < json.loads(clock.read_text())["seconds"] <= first.seconds
    clock.write_text(json.dumps({"seconds": 1000.0}))  # as if steps 1-2 had taken 1000 s
    _, report = training.train_reranker(data.train, [], _settings(tmp_path, tiny_reranker_dir, max_steps=4,
                                                                   save_steps=2))
    assert report.steps == 4 and len(report.first_losses) <= 1 + 2 // 5, "steps 1-2 must not run again"
    assert 1000 < report.seconds < 1000 + first.seconds * 10, "steps 1-2's time counts in the resumed run's total"


def test_command_refuses_a_test_split(collection, capsys):
    from commands import train as script
    from commands.common import run

    code = run(script.main, ["--data", str(collection), "--split", "test", "--base", "x", "--out", "y"])
    assert code == 2
    assert "training on a test split is not allowed" in capsys.readouterr().err
