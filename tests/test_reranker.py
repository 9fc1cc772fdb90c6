"""The cross-encoder stage: reorders by the model's own score, sigmoid 0..1, keeps top_n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.pipeline import build_stage
from pipeline.rerankers.cross_encoder import CrossEncoderReranker
from pipeline.scoring import RankSettings, rank_hits
from pipeline.types import Hit

PASSAGES = [
    "Vitamin C deficiency causes scurvy with bleeding gums.",
    "Iron deficiency leads to anemia and pale skin.",
    "Vitamin D deficiency causes bone pain, muscle weakness and fatigue.",
    "The ball python is a snake from Africa.",
    "Python is a programming language; pip installs packages.",
    "长城是中国古代的军事防御工程。",
]


def make_hits() -> list[Hit]:
    return [
        Hit(f"d{i}#0", f"d{i}", text, f"d{i}.md", 0, 0.9 - 0.1 * i, i + 1, 0.9 - 0.1 * i, i + 1)
        for i, text in enumerate(PASSAGES)
    ]


@pytest.fixture()
def reranker(tiny_reranker_dir) -> CrossEncoderReranker:
    params = CrossEncoderReranker.Params(model=str(tiny_reranker_dir), top_n=3, device="cpu", batch_size=4)
    return CrossEncoderReranker(params)


def test_rerank_orders_by_cross_encoder_score(reranker, tiny_reranker_dir):
    from sentence_transformers import CrossEncoder

    query = "symptoms of vitamin D deficiency"
    hits = make_hits()
    # the library's own scores, computed independently of the stage
    reference = CrossEncoder(str(tiny_reranker_dir), device="cpu").predict(
        [(query, p) for p in PASSAGES], activation_fn=torch.nn.Sigmoid()
    )
    out = reranker.rerank(query, hits)
    expected = np.argsort(-reference, kind="stable")[:3]
    assert [h.doc_id for h in out] == [f"d{i}" for i in expected]
    np.testing.assert_allclose([h.score for h in out], reference[expected], rtol=1e-5, atol=1e-6)
    assert [h.rank for h in out] == [1, 2, 3]
    assert all(0.0 < h.score < 1.0 for h in out)
    for hit in out:
        original = hits[int(hit.doc_id[1:])]
        assert hit.retrieval_rank == original.rank and hit.retrieval_score == original.score
        assert hit.rank_change == original.rank - hit.rank
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6], "input hits must not be mutated"


def test_top_n_and_empty_input(reranker):
    assert len(reranker.rerank("q", make_hits(), top_n=5)) == 5
    assert len(reranker.rerank("q", make_hits()[:2])) == 2
    assert reranker.rerank("q", []) == []


def test_scores_are_in_input_order(reranker):
    scores = reranker.score("vitamin", PASSAGES)
    assert scores.shape == (6,) and scores.dtype == np.float32
    reversed_scores = reranker.score("vitamin", PASSAGES[::-1])
    np.testing.assert_allclose(scores, reversed_scores[::-1], rtol=1e-5, atol=1e-6)


def test_builds_from_config_through_the_registry(tiny_reranker_dir):
    config = parse_config({
        "embedder": {"type": "sentence-transformers", "model": "x"},
        "index": {"type": "faiss"},
        "retriever": {"type": "dense"},
        "reranker": {"type": "cross-encoder", "model": str(tiny_reranker_dir), "max_length": 64, "device": "cpu"},
    })
    stage = build_stage(config.reranker)
    assert isinstance(stage, CrossEncoderReranker)
    assert stage.model.max_length == 64
    assert next(stage.model.model.parameters()).dtype == torch.float32  # no fp16 on the CPU


def test_long_query_is_capped_and_leaves_room_for_the_passage(tiny_reranker_dir):
    params = CrossEncoderReranker.Params(model=str(tiny_reranker_dir), max_length=64, device="cpu")
    stage = CrossEncoderReranker(params)
    features = stage._tokenize("vitamin deficiency " * 200, ["bone pain and muscle weakness " * 50, "short"])
    lengths = [len(ids) for ids in features["input_ids"]]
    assert max(lengths) == 64
    # the second segment (after the separator) still holds passage tokens
    sep = stage.model.tokenizer.sep_token_id
    first = features["input_ids"][0]
    passage_tokens = len(first) - first.index(sep) - 3  # </s> </s> ... </s>
    assert passage_tokens >= 64 - int(64 * 0.75) - 4
    scores = stage.score("vitamin deficiency " * 200, ["bone pain", "short"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def test_int8_path_scores_close_to_fp32(tiny_reranker_dir):
    exact = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu"))
    int8 = CrossEncoderReranker(
        CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu", quantize="int8")
    )
    a, b = exact.score("vitamin D", PASSAGES), int8.score("vitamin D", PASSAGES)
    assert np.max(np.abs(a - b)) < 0.05
    assert not np.array_equal(a, b), "the int8 path should really run quantized layers"


def test_int8_keeps_skipped_layers_in_fp32(tiny_reranker_dir):
    import torch

    def linear_kinds(params):
        stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu", **params))
        stage.load()
        return {name: type(m).__module__.startswith("torch.ao") for name, m in stage._network.named_modules()
                if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Linear"}

    assert all(linear_kinds({"quantize": "int8"}).values()), "by default every linear layer is int8"
    kinds = linear_kinds({"quantize": "int8", "quantize_skip": [r"encoder\.layer\.\d+\.output\.dense$"]})
    ffn_out = {n for n in kinds if n.endswith("output.dense") and "attention" not in n}
    assert ffn_out and not any(kinds[n] for n in ffn_out), "the skipped feed-forward outputs stay fp32"
    assert all(q for n, q in kinds.items() if n not in ffn_out), "every other linear layer is int8"


def test_bad_quantize_skip_is_a_config_error(tiny_reranker_dir):
    from conftest import ROOT

    with pytest.raises(ConfigError, match="quantize_skip"):
        load_config(ROOT / "configs" / "eval" / "dense-rerank.yaml", ["reranker.quantize_skip=['(']"])


def test_length_sorted_batches_restore_order_and_back_off():
    from pipeline.batching import run_length_sorted

    class FakeOOM(Exception):
        pass

    calls = []

    def call(indices):
        calls.append(len(indices))
        if len(indices) > 2:
            raise FakeOOM("out of memory")
        return np.asarray(indices, dtype=np.float32) * 10

    lengths = [3, 9, 1, 7, 5]
    scores, final = run_length_sorted(lengths, 4, call, is_oom=lambda e: isinstance(e, FakeOOM))
    np.testing.assert_array_equal(scores, [0, 10, 20, 30, 40])
    assert final == 2 and calls[0] == 4 and max(calls[1:]) <= 2
    with pytest.raises(ValueError):
        run_length_sorted(lengths, 4, lambda idx: (_ for _ in ()).throw(ValueError("a real bug")))


def test_weight_mixes_in_the_first_stage(tiny_reranker_dir):
    hits = make_hits()
    only_ce = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu", top_n=6))
    ce = only_ce.score("vitamin D", PASSAGES)
    only_first = RankSettings(top_n=6, weight=0.0)
    assert [h.rank for h in rank_hits(hits, ce, only_first)] == [1, 2, 3, 4, 5, 6]
    assert [h.doc_id for h in rank_hits(hits, ce, only_first)] == [h.doc_id for h in hits]
    first = np.array([h.retrieval_score for h in hits])
    def scaled(x):
        return (x - x.min()) / (x.max() - x.min())

    expected = 0.25 * ce + 0.75 * scaled(first)  # mix: score (the default): the reranker's score as it is
    out = rank_hits(hits, ce, RankSettings(top_n=6, weight=0.25))
    assert out == only_ce.rerank("vitamin D", hits, top_n=6, weight=0.25)  # the stage's convenience, same ranking
    np.testing.assert_allclose([h.score for h in out], np.sort(expected)[::-1], rtol=1e-5)
    assert all(0.0 <= h.score <= 1.0 for h in out)
    stretched = RankSettings(top_n=6, weight=0.25, mix="minmax")
    expected = 0.25 * scaled(ce) + 0.75 * scaled(first)  # mix: minmax: both scaled per query
    np.testing.assert_allclose([h.score for h in rank_hits(hits, ce, stretched)], np.sort(expected)[::-1], rtol=1e-5)
    with pytest.raises(ValueError, match="mix"):
        CrossEncoderReranker.Params(model=str(tiny_reranker_dir), mix="rank")


# --- CPU backends (openvino, onnx), their export cache, and calibration (issue 17) ---

QUERY = "symptoms of vitamin D deficiency"


def _stage(model_dir, **extra) -> CrossEncoderReranker:
    return CrossEncoderReranker(CrossEncoderReranker.Params(model=str(model_dir), device="cpu", batch_size=4, **extra))


@pytest.fixture()
def model_copy(tiny_reranker_dir, tmp_path):
    """A private copy of the tiny model, so exports and calibration files stay in this test.

    Exports other tests left next to the shared model are not copied: each test starts with none.
    """
    import shutil

    return Path(shutil.copytree(tiny_reranker_dir, tmp_path / "model", ignore=shutil.ignore_patterns(".export")))


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_backend_scores_match_torch_in_order_and_range(model_copy, backend):
    pytest.importorskip({"openvino": "openvino", "onnx": "onnxruntime"}[backend])
    reference = _stage(model_copy).score(QUERY, PASSAGES)
    stage = _stage(model_copy, backend=backend)
    scores = stage.score(QUERY, PASSAGES)
    assert stage.backend_used == backend
    assert scores.dtype == np.float32 and scores.shape == (len(PASSAGES),)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert list(np.argsort(-scores, kind="stable")) == list(np.argsort(-reference, kind="stable"))
    np.testing.assert_allclose(stage.logits(QUERY, PASSAGES), _stage(model_copy).logits(QUERY, PASSAGES), atol=1e-4)


def test_onnx_int8_scores_close_to_torch(model_copy):
    pytest.importorskip("onnxruntime")
    reference = _stage(model_copy).score(QUERY, PASSAGES)
    scores = _stage(model_copy, backend="onnx", quantize="int8").score(QUERY, PASSAGES)
    assert np.all((scores > 0) & (scores < 1))
    assert np.max(np.abs(scores - reference)) < 0.1


def test_export_is_cached_and_rebuilt_when_settings_or_model_change(model_copy):
    pytest.importorskip("onnxruntime")
    first = _stage(model_copy, backend="onnx").load().export_path
    assert first.parent == model_copy / ".export" and (first / "export.json").is_file()
    stamp = (first / "model.onnx").stat().st_mtime_ns
    again = _stage(model_copy, backend="onnx").load().export_path
    assert again == first and (first / "model.onnx").stat().st_mtime_ns == stamp  # reused, not rewritten
    quantized = _stage(model_copy, backend="onnx", quantize="int8").load().export_path
    assert quantized != first
    config = model_copy / "config.json"
    config.write_text(config.read_text().replace("{", '{\n  "_changed": 1,', 1))
    assert _stage(model_copy, backend="onnx").load().export_path not in (first, quantized)


def test_read_only_model_folder_exports_to_the_user_cache(model_copy, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    (model_copy / ".export").write_text("not a folder")  # the export folder cannot be created here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    stage = _stage(model_copy, backend="onnx").load()
    assert stage.export_path.is_relative_to(tmp_path / "user-cache" / "rag-pipeline" / "rerankers")
    np.testing.assert_allclose(stage.score(QUERY, PASSAGES), _stage(model_copy).score(QUERY, PASSAGES), atol=1e-4)


def test_missing_runtime_falls_back_to_torch_with_a_warning(model_copy, monkeypatch, caplog):
    import sys

    from pipeline.errors import MissingDependencyError
    from pipeline.rerankers import backends

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the 'fast' extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[fast\]'"):
        backends.require("openvino")
    stage = _stage(model_copy, backend="openvino")
    with caplog.at_level("WARNING"):
        scores = stage.score(QUERY, PASSAGES)
    assert stage.backend_used == "torch"
    assert "fast" in caplog.text and "torch" in caplog.text
    np.testing.assert_allclose(scores, _stage(model_copy).score(QUERY, PASSAGES), atol=1e-6)


def test_openvino_int8_without_calibration_pairs_is_a_config_error(model_copy, monkeypatch):
    pytest.importorskip("nncf")
    from pipeline.rerankers import backends

    # a model without pairs of its own calibrates on the project's shipped pairs ...
    assert backends.calibration_pairs_path(model_copy) == backends.SHIPPED_PAIRS
    # ... and when there are none at all, it is a config error that says what to write
    monkeypatch.setattr(backends, "SHIPPED_PAIRS", model_copy / "missing" / "calibration_pairs.jsonl")
    with pytest.raises(ConfigError, match="calibration_pairs.jsonl"):
        _stage(model_copy, backend="openvino", quantize="int8").load()


def test_calibration_file_is_applied_and_raw_logit_kept(model_copy):
    import json

    from pipeline.rerankers.calibration import expected_calibration_error, fit_platt

    logits = _stage(model_copy).logits(QUERY, PASSAGES)
    plain = _stage(model_copy).score(QUERY, PASSAGES)
    np.testing.assert_allclose(plain, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    (model_copy / "calibration.json").write_text(json.dumps({"method": "platt", "a": 2.0, "b": -1.0}))
    stage = _stage(model_copy)
    np.testing.assert_allclose(stage.score(QUERY, PASSAGES), 1 / (1 + np.exp(-(2 * logits - 1))), rtol=1e-5)
    np.testing.assert_allclose(stage.logits(QUERY, PASSAGES), logits, rtol=1e-6)  # the raw logit is unchanged
    np.testing.assert_allclose(_stage(model_copy, calibrate=False).score(QUERY, PASSAGES), plain, rtol=1e-6)
    (model_copy / "calibration.json").write_text(json.dumps({"method": "platt", "a": -1, "b": 0}))
    with pytest.raises(ConfigError, match="a must be a positive"):
        _stage(model_copy).score(QUERY, PASSAGES)
    # Platt scaling recovers a known mapping, and lowers the calibration error of an overconfident score
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * x - 1)))).astype(int)
    fitted = fit_platt(x, y)
    assert abs(fitted.a - 0.5) < 0.1 and abs(fitted.b + 1) < 0.2
    assert expected_calibration_error(fitted.apply(x), y) < expected_calibration_error(1 / (1 + np.exp(-x)), y)
    # logits far from 0 (a similarity head's scale x cosine, ~90) fit to the same probabilities
    shifted = fit_platt(x + 90.0, y)
    np.testing.assert_allclose(shifted.apply(x + 90.0), fitted.apply(x), atol=1e-6)


def test_unknown_backend_and_skip_on_runtime_are_config_errors(model_copy):
    with pytest.raises(ValueError, match="backend"):
        CrossEncoderReranker.Params(model=str(model_copy), backend="tensorrt")
    with pytest.raises(ConfigError, match="quantize_skip applies to backend torch"):
        _stage(model_copy, backend="onnx", quantize="int8", quantize_skip=["dense"]).load()


def test_auto_keeps_its_quantize_skip_for_torch_and_leaves_it_to_a_runtime_it_chooses(model_copy, monkeypatch):
    # one config for every CPU: torch int8 keeps the listed layers in fp32; where auto picks OpenVINO
    # (which quantizes by NNCF) the skip list does not apply and is no error
    from pipeline.rerankers import backends

    monkeypatch.setattr(backends, "available", lambda backend, quantize="none": True)
    for chosen in ("openvino", "torch"):
        monkeypatch.setattr(backends, "auto_backend", lambda quantize, device, flags=None, c=chosen: (c, "test"))
        stage = _stage(model_copy, backend="auto", quantize="int8", quantize_skip=["dense"])
        assert stage.choose_backend() == chosen


def test_window_spans_cover_every_token_with_overlap():
    from pipeline.rerankers.cross_encoder import window_spans

    assert window_spans(3, 4) == [(0, 3)]
    spans = window_spans(1000, 100)
    assert spans[0] == (0, 100) and spans[-1] == (900, 1000) and all(e - s == 100 for s, e in spans)
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # neighbours overlap
    assert set().union(*(range(s, e) for s, e in spans)) == set(range(1000))


def test_long_passages_windows_scores_a_long_chunk_by_its_best_window(tiny_reranker_dir):
    """reranker.long_passages: windows in the pipeline: a long passage gets its best window's score."""
    from pipeline.types import ScoreOptions

    params = CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu", max_length=32,
                                         long_passages="windows")
    stage = CrossEncoderReranker(params).load()
    long = " ".join(PASSAGES * 3)
    windows, owners = stage._pieces("vitamin D", [long, "vitamin D"], ScoreOptions())
    assert owners.count(0) > 2 and owners.count(1) == 1
    expected = max(stage.score("vitamin D", [w])[0] for w, o in zip(windows, owners) if o == 0)
    scores = stage.score("vitamin D", [long, "vitamin D"])
    assert scores[0] == pytest.approx(expected, abs=1e-6)
    truncating = CrossEncoderReranker(params.model_copy(update={"long_passages": "truncate"})).load()
    assert truncating.score("vitamin D", [long])[0] == pytest.approx(truncating.score("vitamin D", [windows[0]])[0],
                                                                     abs=1e-6)  # its first window only
    with pytest.raises(ValueError, match="long_passages"):
        CrossEncoderReranker.Params(model="m", long_passages="split")


def test_all_caps_text_is_read_in_lower_case(tiny_reranker_dir):
    from pipeline.rerankers.cross_encoder import fold_all_caps

    assert fold_all_caps("MEASUREMENT OF DIELECTRIC CONSTANT") == "measurement of dielectric constant"
    for unchanged in ("What is TSS at IBM?", "USA", "维生素D缺乏有什么症状", "Vitamin D deficiency"):
        assert fold_all_caps(unchanged) == unchanged
    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(tiny_reranker_dir), device="cpu"))
    caps = stage._tokenize("SYMPTOMS OF VITAMIN D DEFICIENCY", ["VITAMIN D DEFICIENCY CAUSES BONE PAIN."])
    assert caps == stage._tokenize("symptoms of vitamin d deficiency", ["vitamin d deficiency causes bone pain."])


def _export_in_child(model_dir: str, started, count_file: str) -> None:
    """One process's load of a fresh ONNX export (run in a child: the file lock is per process)."""
    from pipeline.rerankers import backends

    real = backends._export

    def counting(*args, **kwargs):
        with open(count_file, "a") as handle:
            handle.write("export\n")
        real(*args, **kwargs)

    backends._export = counting
    started.wait()
    _stage(Path(model_dir), backend="onnx").load()


def test_two_processes_exporting_at_once_export_once(model_copy, tmp_path):
    """Two workers (or a server and build_index.py) on a fresh model: one exports, the other waits and reuses."""
    import multiprocessing

    pytest.importorskip("onnxruntime")
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    count = tmp_path / "exports.txt"
    children = [context.Process(target=_export_in_child, args=(str(model_copy), started, str(count)))
                for _ in range(2)]
    for child in children:
        child.start()
    started.set()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0, 0]
    assert count.read_text().splitlines() == ["export"]  # the second found the first's export after the lock
    folders = [p for p in (model_copy / ".export").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "export.json").is_file()
