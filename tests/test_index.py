"""Build, write, load and search an index; manifest checks; atomic versions; GPU path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.build import build_index
from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError, IndexMismatchError, IndexMissingError
from pipeline.indexes.faiss import FaissIndex, faiss_gpu_count
from pipeline.pipeline import Pipeline, build_stage
from pipeline.store import CURRENT, current_version, load_index
from tests.conftest import write_config


def test_flat_index_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:7] + 0.1 * rng.normal(size=(7, 24)).astype(np.float32)
    index = FaissIndex(FaissIndex.Params(device="cpu"))
    index.build(vectors)
    scores, ids = index.search(queries, 10)
    expected = queries @ vectors.T
    for row, (s, i) in enumerate(zip(scores, ids)):
        np.testing.assert_allclose(s, np.sort(expected[row])[::-1][:10], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(expected[row][i], s, rtol=1e-5, atol=1e-5)  # tie-aware: compare scores
    scores, ids = index.search(queries, 1000)
    assert ids.shape == (7, 300)


@pytest.mark.parametrize(("factory", "extra"), [("HNSW16", {"ef_search": 64}), ("IVF4,Flat", {"nprobe": 4})])
def test_approximate_factories_build_and_search(factory, extra):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(FaissIndex.Params(device="cpu", factory=factory, **extra))
    index.build(vectors)
    _, ids = index.search(vectors[:5], 5)
    assert (ids[:, 0] == np.arange(5)).all()


def test_bad_factory_and_search_param():
    with pytest.raises(ConfigError, match="index.factory: FAISS cannot build 'Nonsense'"):
        FaissIndex(FaissIndex.Params(device="cpu", factory="Nonsense")).build(np.zeros((4, 8), np.float32))
    with pytest.raises(ConfigError, match="index.nprobe does not apply to index.factory 'Flat'"):
        FaissIndex(FaissIndex.Params(device="cpu", nprobe=3)).build(np.ones((4, 8), np.float32))


def test_round_trip_gives_the_same_ids(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    report = build_index(tiny_corpus, config)
    manifest = report.manifest
    assert manifest.counts["documents"] == 5 and manifest.counts["chunks"] >= 5
    assert manifest.embedder["model"] == str(tiny_embedder_dir) and manifest.embedder["dimension"] == 32
    assert manifest.embedder["normalize"] is True and manifest.chunking == {"enabled": True, "size": 16, "overlap": 4}
    assert {"torch", "faiss-cpu", "sentence-transformers"} <= set(manifest.versions)
    assert manifest.created_at and len(manifest.corpus["sha256"]) == 64

    embedder = build_stage(config.embedder)
    bundle = load_index(tmp_path / "index", build_stage(config.index))
    chunks = bundle.chunks.get(list(range(bundle.vectors.ntotal)))
    texts = [chunks[i].text for i in range(len(chunks))]
    vectors = embedder.encode_documents(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    query = embedder.encode_queries(["bone pain from low vitamin D"])
    expected = np.argsort(-(query @ vectors.T)[0], kind="stable")[:5]
    scores, ids = bundle.vectors.search(query, 5)
    np.testing.assert_allclose(scores[0], (query @ vectors.T)[0][expected], rtol=1e-4, atol=1e-5)

    hits = Pipeline(config).retriever.search(["bone pain from low vitamin D"], 5)[0]
    assert [h.chunk_id for h in hits] == [chunks[int(i)].chunk_id for i in ids[0]]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]


def test_rebuild_swaps_versions_atomically(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    first = build_index(tiny_corpus, config).version_dir
    (tiny_corpus / "new.txt").write_text("A brand new document about tea.", encoding="utf-8")
    second = build_index(tiny_corpus, config).version_dir
    assert first != second and current_version(tmp_path / "index") == second
    assert load_index(tmp_path / "index", build_stage(config.index)).manifest.counts["documents"] == 6
    third = build_index(tiny_corpus, config).version_dir
    # the previous version is kept for readers still loading it; older ones go
    assert sorted(p.name for p in (tmp_path / "index").glob("v-*")) == sorted([second.name, third.name])


def test_failed_build_keeps_the_old_index(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    good = build_index(tiny_corpus, config).version_dir
    bad = load_config(tmp_path / "c.yaml", ["index.factory=Nonsense"])
    with pytest.raises(ConfigError):
        build_index(tiny_corpus, bad)
    assert current_version(tmp_path / "index") == good
    assert not list((tmp_path / "index").glob("*.tmp"))


def test_missing_and_broken_indexes(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = load_config(write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    with pytest.raises(IndexMissingError, match="no index at .*build one with"):
        Pipeline(config).ask("anything")
    (tmp_path / "index").mkdir()
    with pytest.raises(IndexMissingError, match="holds no finished index"):
        Pipeline(config).ask("anything")
    version = build_index(tiny_corpus, config).version_dir
    (version / "index.faiss").write_bytes(b"truncated")
    with pytest.raises(IndexMissingError, match="index.faiss is unreadable"):
        Pipeline(config).ask("anything")
    (version / "index.faiss").unlink()
    with pytest.raises(IndexMissingError, match="index.faiss is missing"):
        Pipeline(config).ask("anything")
    (tmp_path / "index" / CURRENT).write_text("v-gone\n")
    with pytest.raises(IndexMissingError, match="points at a missing version"):
        Pipeline(config).ask("anything")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("chunking.size=32", r"built with chunking.size=16 but the config says 32"),
        ("chunking.enabled=false", r"built with chunking.enabled=True but the config says False"),
        ("embedder.normalize=false", r"built with embedder.normalize=True"),
    ],
)
def test_manifest_mismatch_is_an_error(tmp_path, tiny_corpus, tiny_embedder_dir, override, match):
    path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")
    build_index(tiny_corpus, load_config(path))
    with pytest.raises(IndexMismatchError, match=match):
        Pipeline.from_yaml(path, [override]).ask("vitamin")


def test_other_model_or_dimension_is_an_error(tmp_path, tiny_corpus, tiny_embedder_dir):
    path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")
    build_index(tiny_corpus, load_config(path))
    mismatch = r"built with embedder.model=.*but the config says 'bundled:all-MiniLM-L6-v2'"
    with pytest.raises(IndexMismatchError, match=mismatch):
        Pipeline.from_yaml(path, ["embedder.model=bundled:all-MiniLM-L6-v2"]).ask("vitamin")
    version = current_version(tmp_path / "index")
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["embedder"]["dimension"] = 1024
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match=r"holds 1024-d vectors but .* makes 32-d ones"):
        Pipeline.from_yaml(path).ask("vitamin")


def test_chunk_store_out_of_step_is_detected(tmp_path, tiny_corpus, tiny_embedder_dir):
    import sqlite3

    path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")
    version = build_index(tiny_corpus, load_config(path)).version_dir
    with sqlite3.connect(version / "chunks.sqlite") as conn:
        conn.execute("DELETE FROM chunks WHERE id = 0")
    with pytest.raises(IndexMissingError, match="inconsistent"):
        Pipeline.from_yaml(path).ask("vitamin")


def test_cuda_without_gpu_is_a_config_error():
    if faiss_gpu_count() > 0:
        pytest.skip("a GPU is present")
    index = FaissIndex(FaissIndex.Params(device="cuda"))
    with pytest.raises(ConfigError, match="index.device is 'cuda' but this faiss build has no GPU support"):
        index.build(np.ones((2, 4), np.float32))
    config = parse_config({
        "embedder": {"type": "sentence-transformers", "model": "x", "device": "cuda"},
        "index": {"type": "faiss"}, "retriever": {"type": "dense"},
    })
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="embedder.device is 'cuda' but torch sees no CUDA GPU"):
            _ = build_stage(config.embedder).model


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    if faiss_gpu_count() == 0:
        pytest.skip("needs a faiss GPU build and a CUDA GPU")
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(2000, 64)).astype(np.float32)
    cpu = FaissIndex(FaissIndex.Params(device="cpu"))
    gpu = FaissIndex(FaissIndex.Params(device="auto"))
    cpu.build(vectors)
    gpu.build(vectors)
    assert gpu.on_gpu
    s_cpu, _ = cpu.search(vectors[:10], 20)
    s_gpu, _ = gpu.search(vectors[:10], 20)
    np.testing.assert_allclose(s_cpu, s_gpu, rtol=1e-3, atol=1e-3)
