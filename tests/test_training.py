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
from evaluation.collection import load_collection
from pipeline.config import load_config
from pipeline.errors import CorpusError, InputError, MissingDependencyError
from pipeline.scoring import mix_scores, rank_by_scores
from pipeline.types import Hit

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    dev_ids = training.dev_query_ids(load_collection(collection, "train"), 1, seed=3)
    assert [d.query_id for d in data.dev] == dev_ids, "measuring on dev must see the queries training held back"


def test_weight_is_the_cross_encoders_share_when_mixing():
    ce, first = [0.9, 0.1, 0.5], [10.0, 30.0, 20.0]
    assert mix_scores(ce, first, 1.0) == pytest.approx(ce)  # the reranker alone: its own scores
    assert mix_scores(ce, first, 0.0) == pytest.approx([0.0, 1.0, 0.5])  # the first stage's order
    assert mix_scores(ce, first, 0.75) == pytest.approx([0.75, 0.25, 0.5])
    assert mix_scores([0.3, 0.3], [2.0, 1.0], 0.5) == pytest.approx([1.0, 0.5])
    assert list(mix_scores([], [], 0.5)) == []


def test_score_mix_lets_a_confident_reranker_move_the_order_and_an_unsure_one_barely():
    first = [0.80, 0.78, 0.60]  # the first stage's best first
    unsure = mix_scores([0.02, 0.03, 0.04], first, 0.8, mode="score")  # about the same probability everywhere
    assert np.argsort(-unsure).tolist() == [0, 1, 2]  # the first stage's order stands
    confident = mix_scores([0.05, 0.10, 0.90], first, 0.8, mode="score")
    assert np.argsort(-confident).tolist() == [2, 1, 0]
    # min-max mixing stretches the unsure reranker's 0.02 difference over the whole range: it reorders
    assert np.argsort(-mix_scores([0.02, 0.03, 0.04], first, 0.8)).tolist() == [2, 1, 0]
    assert mix_scores([0.2, 0.4], [1.0, 0.0], 1.0, mode="score") == pytest.approx([0.2, 0.4])
    with pytest.raises(ValueError, match="mix mode must be one of minmax, score"):
        mix_scores([0.1], [0.1], 0.5, mode="rank")


def _old_interpolate(ce, first, first_weight) -> list[float]:
    """The mix training used before (the first stage's weight; constant lists scaled to 0), as an oracle."""
    def minmax(values):
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.0 for v in values]

    return [(1 - first_weight) * c + first_weight * f for c, f in zip(minmax(ce), minmax(first))]


@pytest.mark.parametrize("first_weight", [0.0, 0.1, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0])
def test_mixing_ranks_as_training_did_with_one_minus_the_first_stage_weight(first_weight):
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 30))
        ce = rng.random(n).round(2 if trial % 2 else 6).tolist()  # coarse values give ties
        first = np.sort(rng.random(n))[::-1].round(2 if trial % 3 else 6).tolist()  # best first, as retrieved
        hits = [Hit(f"c{i}", f"d{i}", "", "", 0, s, i + 1, s, i + 1) for i, s in enumerate(first)]
        mixed = rank_by_scores(hits, mix_scores(ce, first, 1.0 - first_weight))
        assert [h.rank - 1 for h in mixed] == list(range(n))
        # The old ranking, tie-aware: sorted by the old score, with scores equal within float32 rounding
        # (the old mix ran in float64) in either order.
        old = _old_interpolate(ce, first, first_weight)
        order = [int(h.doc_id[1:]) for h in mixed]
        assert all(old[a] >= old[b] - 1e-6 for a, b in zip(order, order[1:]))


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


def test_missing_training_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "accelerate", None)  # as if not installed
    group = training.TrainingGroup("q", "p", ("n",), "jsonl")
    with pytest.raises(MissingDependencyError, match=r"package 'accelerate'.*pip install -e '\.\[train\]'"):
        training.train_reranker([group], [], _settings(tmp_path, "unused"))


def test_measuring_goes_through_the_reranker_stage(collection, config, tiny_reranker_dir, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(tiny_reranker_dir), device="cpu", max_length=64)
    stage = training.reranker_stage(model, max_length=64)
    scorer = training.PairScores(stage)
    stages = {"dense": {"type": "dense", "top_k": 5}}
    m = training.measure_reranking(collection, "train", config, scorer, cache_dir=tmp_path / "cache",
                                   first_stages=stages, top_k=5, weights=[0.0, 0.5])
    r = m["results"]["dense"]
    assert m["queries"] == 5 and not m["query_subset"] and set(r["mixed"]) == {"0", "0.5", "1"}
    assert r["mixed"]["0"] == r["first_stage"], "weight 0 keeps the first stage's order"
    assert r["reranked"] == r["mixed"]["1"] and r["delta"] == pytest.approx(r["reranked"] - r["first_stage"], abs=1e-4)
    # Weight 1 is exactly what the pipeline's reranker stage returns for the first stage's hits. The hits
    # come from one batch of the same queries, as measuring embeds them: a query embedded in another batch
    # can differ in the last bits, enough to swap a near tie at the 5th hit of this tiny random embedder.
    first = training.FirstStage(config, load_collection(collection, "train"), tmp_path / "cache")
    qrels = load_collection(collection, "train").qrels
    qids = list(QUERIES)
    found = dict(zip(qids, first.hits([QUERIES[q][0] for q in qids], 5)))
    rankings = {q: [h.doc_id for h in stage.rerank(QUERIES[q][0], found[q], top_n=5, weight=1.0)] for q in qids}
    from evaluation.metrics import evaluate_rankings

    assert evaluate_rankings(qrels, rankings, ["ndcg@10"]).means["ndcg@10"] == pytest.approx(r["reranked"], abs=1e-4)
    assert scorer.scored == 25, "each (query, passage) pair is scored once, whatever the weights"
    # A dev subset by query ids: it scores only the pairs the first call did not (none unless the subset's
    # own batch swapped a near tie), so 25 + 10 would mean the cache was not used.
    dev = training.measure_reranking(collection, "train", config, scorer, cache_dir=tmp_path / "cache",
                                     first_stages=stages, top_k=5, query_ids=["q2", "q4"])
    seen = {(q, h.text) for q in qids for h in found[q]}
    subset = dict(zip(["q2", "q4"], first.hits([QUERIES[q][0] for q in ("q2", "q4")], 5)))
    new = {(q, h.text) for q, hits in subset.items() for h in hits} - seen
    assert dev["queries"] == 2 and dev["query_subset"] and scorer.scored == 25 + len(new) and len(new) < 10


def test_command_trains_measures_and_writes_the_card(collection, config, tiny_reranker_dir, tmp_path, capsys):
    from commands import train as script
    from commands.common import run

    out = tmp_path / "model"
    args = ["--config", config.source, "--data", str(collection), "--base", str(tiny_reranker_dir), "--out", str(out),
            "--work-dir", str(tmp_path / "ckpt"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--max-length", "64", "--batch-size", "2", "--negatives", "2", "--mine-top-k", "6", "--dev-queries", "2",
            "--dev-top-k", "5", "--max-steps", "2", "--save-steps", "2", "--eval-dev", "--eval-top-k", "5",
            "--eval-weights", "0,0.5"]
    assert run(script.main, args) == 0, capsys.readouterr().err
    saved = json.loads((out / "training_report.json").read_text())
    assert saved["weight"].startswith("the cross-encoder's share")
    dev = saved["measurements"][0]
    assert set(dev["results"]["dense"]["mixed"]) == {"0", "0.5", "1"} and dev["split"] == "train (dev queries)"
    assert saved["report"]["dev_history"], "each checkpoint is scored on dev through the reranker stage"
    card = (out / "README.md").read_text()
    assert "the cross-encoder's share" in card and "| mixed |" in card
    # Measuring again without training keeps the report; an old report's first-stage weights are converted.
    expected = json.loads(json.dumps(saved["measurements"]))
    for m in saved["measurements"]:
        for r in m["results"].values():
            r["interpolated"] = {f"{1 - float(w):g}": v for w, v in r.pop("mixed").items()}
        m["chosen_weights"] = {k: round(1 - w, 6) for k, w in m["chosen_weights"].items()}
    old = {k: v for k, v in saved.items() if k != "weight"}
    (out / "training_report.json").write_text(json.dumps(old))
    assert run(script.main, [a for a in args if a != "--eval-dev"] + ["--skip-training"]) == 0
    again = json.loads((out / "training_report.json").read_text())
    assert again["measurements"] == expected and "weight" in again
