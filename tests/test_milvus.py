"""The Milvus store (``index.type: milvus``) on Milvus Lite, for real: same results as FAISS, same build semantics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

pytest.importorskip("pymilvus", reason="needs the 'scale' extra: pip install -e '.[scale]'")
pytest.importorskip("milvus_lite", reason="Milvus Lite has no wheel for this platform")

from indexer.build import build_index
from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError, IndexLockedError, MissingDependencyError, ServiceUnavailableError
from pipeline.indexes.faiss import FaissIndex
from pipeline.indexes.milvus import MILVUS_FILE, MilvusIndex
from pipeline.pipeline import Pipeline, build_stage
from pipeline.store import current_version, load_index
from tests.conftest import ROOT, write_config


def _unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _saved(tmp_path, vectors, **params) -> MilvusIndex:
    """Build and save into a version folder, then load it back in a fresh stage (as a reader would)."""
    version = tmp_path / "v-test"
    version.mkdir()
    writer = MilvusIndex(MilvusIndex.Params(**params))
    writer.build(vectors)
    writer.save(version)
    reader = MilvusIndex(MilvusIndex.Params(**params))
    reader.load(version)
    return reader


def test_flat_search_equals_faiss(tmp_path):
    vectors = _unit_vectors(1500, 24, seed=0)
    queries = _unit_vectors(8, 24, seed=1)
    milvus = _saved(tmp_path, vectors)
    faiss = FaissIndex(FaissIndex.Params(device="cpu"))
    faiss.build(vectors)
    assert milvus.ntotal == 1500
    m_scores, m_ids = milvus.search(queries, 20)
    f_scores, f_ids = faiss.search(queries, 20)
    np.testing.assert_allclose(m_scores, f_scores, rtol=1e-5, atol=1e-5)
    exact = queries @ vectors.T
    for row in range(len(queries)):  # tie-aware: each returned id has the score it was returned with
        np.testing.assert_allclose(exact[row][m_ids[row]], m_scores[row], rtol=1e-5, atol=1e-5)
    assert (m_ids == f_ids).mean() > 0.99
    scores, ids = milvus.search(queries[:2], 5000)  # top_k beyond the collection: everything, once
    assert ids.shape == (2, 1500) and sorted(ids[0]) == list(range(1500))


@pytest.mark.parametrize(("params", "floor"), [({"index_type": "HNSW", "m": 16, "ef_search": 64}, 0.95),
                                               ({"index_type": "IVF_FLAT", "nlist": 16, "nprobe": 8}, 0.9)])
def test_approximate_indexes_recall_after_reopen(tmp_path, params, floor):
    vectors = _unit_vectors(2000, 16, seed=2)
    queries = _unit_vectors(20, 16, seed=3)
    index = _saved(tmp_path, vectors, **params)
    _, ids = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= floor, recall


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"index_type": "FLAT", "nprobe": 4}, "nprobe does not apply to index_type FLAT"),
        ({"index_type": "HNSW", "nlist": 4}, "nlist does not apply to index_type HNSW"),
        ({"index_type": "DISKANN"}, "index.index_type"),
        ({"uri": "indexes/milvus"}, r"index.uri: expected null .* ending in '.db'"),
        ({"collection": "1-bad"}, "index.collection"),
    ],
)
def test_bad_milvus_settings_are_config_errors(section, match):
    raw = {"embedder": {"type": "sentence-transformers", "model": "x"}, "retriever": {"type": "dense"},
           "index": {"type": "milvus", **section}}
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def _config_file(tmp_path, embedder_dir, **index):
    """A tiny-model config whose index section is ``type: milvus`` (no FAISS keys)."""
    path = write_config(tmp_path / "c.yaml", str(embedder_dir), tmp_path / "index")
    raw = yaml.safe_load(path.read_text())
    raw["index"] = {"type": "milvus", "path": str(tmp_path / "index"), **index}
    path.write_text(yaml.safe_dump(raw))
    return path


def _config(tmp_path, embedder_dir, **index):
    return load_config(_config_file(tmp_path, embedder_dir, **index))


def test_pipeline_on_milvus_equals_faiss(tmp_path, tiny_corpus, tiny_embedder_dir):
    faiss_config = load_config(write_config(tmp_path / "f.yaml", str(tiny_embedder_dir), tmp_path / "faiss"))
    milvus_config = _config(tmp_path, tiny_embedder_dir)
    build_index(tiny_corpus, faiss_config)
    report = build_index(tiny_corpus, milvus_config, reuse_from=tmp_path / "faiss")
    assert report.changes["encoded_chunks"] == 0  # the FAISS index's vectors, reused by content
    assert report.manifest.index == {"type": "milvus", "index_type": "FLAT", "params": {}, "uri": None,
                                     "metric": "inner_product"}
    assert (report.version_dir / MILVUS_FILE).is_file() and (report.version_dir / "milvus.db").is_dir()
    queries = ["bone pain from low vitamin D", "programming language", "长城"]
    expected = Pipeline(faiss_config).retriever.search(queries, 6)
    got = Pipeline(milvus_config).retriever.search(queries, 6)
    for want, have in zip(expected, got):
        assert_same_ranking(have, want)


def assert_same_ranking(have, want, tol=1e-5):
    """The same hits with the same scores, in the same order up to ties (scores within ``tol``).

    The tiny random embedder gives some chunks scores equal to the last float bits, and two engines
    may sum a dot product in different orders, so tied chunks may swap places.
    """
    np.testing.assert_allclose([h.score for h in have], [h.score for h in want], rtol=tol, atol=tol)
    want_scores = {h.chunk_id: h.score for h in want}
    floor = min(want_scores.values())
    for hit in have:
        if hit.chunk_id in want_scores:
            assert abs(hit.score - want_scores[hit.chunk_id]) <= tol, hit.chunk_id
        else:  # only a chunk tied with the last one kept may differ
            assert hit.score <= floor + tol, hit.chunk_id
    swapped = [(a.chunk_id, b.chunk_id) for a, b in zip(have, want) if a.chunk_id != b.chunk_id]
    assert all(abs(want_scores.get(a, floor) - want_scores[b]) <= tol for a, b in swapped), swapped


def test_update_and_delete_like_faiss(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = _config(tmp_path, tiny_embedder_dir, uri=str(tmp_path / "shared.db"))
    first = build_index(tiny_corpus, config)
    (tiny_corpus / "tea.txt").write_text("Green tea contains caffeine and catechins.", encoding="utf-8")
    (tiny_corpus / "iron.txt").unlink()
    second = build_index(tiny_corpus, config, update=True)
    assert second.changes["added"] == 1 and second.changes["removed"] == 1
    assert second.changes["encoded_chunks"] < second.manifest.counts["chunks"]  # unchanged chunks reused
    hits = Pipeline(config).retriever.search(["iron deficiency anemia", "green tea caffeine"], 50)
    assert all(h.doc_id != "iron.txt" for h in hits[0])
    assert hits[1][0].doc_id == "tea.txt"
    bundle = load_index(tmp_path / "index", build_stage(config.index))
    assert bundle.vectors.ntotal == bundle.chunks.count() == second.manifest.counts["chunks"]
    # the shared database keeps one collection per kept version; older ones are dropped
    third = build_index(tiny_corpus, config)
    from pymilvus import MilvusClient

    names = set(MilvusClient(str(tmp_path / "shared.db")).list_collections())
    kept = {p.name for p in (tmp_path / "index").glob("v-*")}
    assert kept == {second.version_dir.name, third.version_dir.name}
    assert names == {f"rerank_rag_{name.replace('-', '_')}" for name in kept}
    assert first.version_dir.name not in kept


def test_failed_build_keeps_the_live_milvus_index(tmp_path, tiny_corpus, tiny_embedder_dir):
    config = _config(tmp_path, tiny_embedder_dir)
    good = build_index(tiny_corpus, config).version_dir
    unreachable = _config(tmp_path, tiny_embedder_dir, uri="http://127.0.0.1:9", timeout=3)
    with pytest.raises(ServiceUnavailableError, match=r"cannot reach the Milvus server at http://127.0.0.1:9"):
        build_index(tiny_corpus, unreachable)
    assert current_version(tmp_path / "index") == good
    assert not list((tmp_path / "index").glob("*.tmp"))
    assert Pipeline(config).retriever.search(["vitamin D"], 3)[0]


HOLD = textwrap.dedent("""
    import sys, time
    from pymilvus import MilvusClient
    MilvusClient(sys.argv[1])
    print("open", flush=True)
    time.sleep(60)
""")


def test_locked_milvus_lite_database_is_one_clear_line(tmp_path, tiny_corpus, tiny_embedder_dir):
    shared = tmp_path / "shared.db"
    config_path = _config_file(tmp_path, tiny_embedder_dir, uri=str(shared))
    build_index(tiny_corpus, load_config(config_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(shared)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(IndexLockedError, match=r"Milvus Lite database .*shared.db is open in another process"):
            Pipeline(load_config(config_path)).retriever.search(["vitamin"], 3)
        cli = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "ask.py"), "vitamin", "--config", str(config_path)],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )
    finally:
        holder.kill()
        holder.wait()
    assert cli.returncode == 1
    assert cli.stderr.startswith("error: the Milvus Lite database") and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the 'scale' extra were not installed
    index = MilvusIndex(MilvusIndex.Params())
    index.build(_unit_vectors(3, 4, seed=0))
    (tmp_path / "v").mkdir()
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[scale\]'"):
        index.save(tmp_path / "v")
