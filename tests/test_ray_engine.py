"""``build_index.py --engine ray`` on a local Ray, for real: the same chunks and vectors as the single-process build."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="needs the 'scale' extra: pip install -e '.[scale]'")

from indexer.build import build_index
from pipeline.config import load_config
from pipeline.errors import MissingDependencyError
from pipeline.store import CHUNKS, EMBEDDINGS, ChunkStore, current_version
from tests.conftest import write_config
from tests.test_cli import build_script, run_script


def _version_contents(index_path):
    version = current_version(index_path)
    store = ChunkStore(version / CHUNKS)
    chunks = store.get(list(range(store.count())))
    store.close()
    return [chunks[i] for i in range(len(chunks))], np.load(version / EMBEDDINGS)


@pytest.fixture()
def short_tmp():
    """A short folder for Ray's session files (Ray's Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rr-ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_build_equals_single_process_build(tmp_path, tiny_corpus, tiny_embedder_dir, short_tmp):
    import ray

    for i in range(12):  # enough documents for several blocks and both actors
        (tiny_corpus / f"extra-{i}.txt").write_text(f"Note {i}: iron, vitamin D and tea, part {i}. " * (i + 1))
    local = write_config(tmp_path / "local.yaml", str(tiny_embedder_dir), tmp_path / "local")
    distributed = write_config(tmp_path / "ray.yaml", str(tiny_embedder_dir), tmp_path / "ray",
                               ray={"batch_size": 4, "temp_dir": str(short_tmp)})
    build_index(tiny_corpus, load_config(local))
    assert run_script(build_script, [str(tiny_corpus), "--config", str(distributed), "--engine", "ray"]) == 0
    assert not ray.is_initialized()  # the local Ray it started is stopped again
    assert list(short_tmp.glob("session_*"))  # and it kept its files where the config said
    assert not list((tmp_path / "ray").glob(".ray-*"))  # Parquet work folder removed

    want_chunks, want_vectors = _version_contents(tmp_path / "local")
    got_chunks, got_vectors = _version_contents(tmp_path / "ray")
    assert len(got_chunks) > 20 and got_chunks == want_chunks  # same chunks, same row order
    np.testing.assert_allclose(got_vectors, want_vectors, rtol=1e-4, atol=1e-5)

    # the Ray-built version is an ordinary one: a single-process rebuild reuses every vector by content
    report = build_index(tiny_corpus, load_config(distributed), engine="local")
    assert report.changes["encoded_chunks"] == 0


def test_missing_ray_names_the_extra(tmp_path, tiny_corpus, tiny_embedder_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    hint = r"--engine ray needs the package 'ray'.*pip install -e '\.\[scale\]'"
    with pytest.raises(MissingDependencyError, match=hint):
        build_index(tiny_corpus, config, engine="ray")
    assert not (tmp_path / "index" / "CURRENT").exists()



def test_long_ray_temp_dir_is_a_config_error(tmp_path, tiny_corpus, tiny_embedder_dir):
    from pipeline.errors import ConfigError

    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index",
                                      ray={"temp_dir": str(tmp_path / ("x" * 60))}))
    with pytest.raises(ConfigError, match="ray.temp_dir: .* Ray puts Unix sockets under it"):
        build_index(tiny_corpus, config, engine="ray")


def test_ray_section_is_validated_and_round_trips():
    from pipeline.config import parse_config
    from pipeline.errors import ConfigError

    raw = {"embedder": {"type": "sentence-transformers", "model": "x"}, "index": {"type": "faiss"},
           "retriever": {"type": "dense"}}
    with pytest.raises(ConfigError, match="unknown key 'ray.adress'; valid keys: address"):
        parse_config({**raw, "ray": {"adress": "auto"}})
    config = parse_config({**raw, "ray": {"address": "ray://head:10001", "cpus_per_actor": 2}})
    assert parse_config(config.to_dict()).ray == config.ray
    assert "ray" not in parse_config(raw).to_dict()  # default settings stay out of reports


def test_evaluate_on_a_ray_built_index_matches_the_local_one(tmp_path, tiny_embedder_dir, short_tmp):
    import json

    from tests.test_cli import load_script
    from tests.test_evaluation import TINY_COLLECTION, write_collection

    t = TINY_COLLECTION
    data = write_collection(tmp_path / "tiny", t["docs"], t["queries"], t["qrels"])
    config = write_config(tmp_path / "dense.yaml", str(tiny_embedder_dir), tmp_path / "unused",
                          retriever={"type": "dense", "top_k": 5}, chunking={"enabled": False},
                          ray={"temp_dir": str(short_tmp)})
    evaluate = load_script("evaluate")
    metrics = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"out-{engine}"
        assert evaluate.main(["--data", str(data), "--config", str(config), "--engine", engine, "--out", str(out),
                              "--cache", str(tmp_path / f"cache-{engine}")]) == 0
        report = json.loads((out / "results.json").read_text())
        assert report["configs"][0]["index"]["build_seconds"] > 0  # each engine built its own index
        metrics[engine] = report["configs"][0]["metrics"]
    assert metrics["ray"] == pytest.approx(metrics["local"], abs=1e-9)
