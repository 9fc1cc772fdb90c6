"""Nothing lost, nothing confusing: bad corpora, failed and killed builds, concurrent reads, updates."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import indexer.build as build_module
from indexer.build import LOCK, build_index
from pipeline import Pipeline
from pipeline.config import load_config
from pipeline.errors import CorpusError, IndexLockedError, IndexMismatchError, IndexMissingError
from pipeline.pipeline import build_stage
from pipeline.store import EMBEDDINGS, current_version, load_index
from tests.conftest import ROOT, write_config

WORDS = "vitamin bone pain iron anemia python snake tea river mountain engine wing rocket bread salt".split()


def make_corpus(root: Path, docs: dict[str, str]) -> Path:
    if root.exists():
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def live_state(index_path: Path, config) -> tuple[str, list[str]]:
    """(corpus hash of the live version, chunk ids of a fixed search) — what a reader sees."""
    bundle = load_index(index_path, build_stage(config.index))
    vectors = np.load(bundle.version_dir / EMBEDDINGS)
    _, ids = bundle.vectors.search(vectors[:1], 5)
    chunks = bundle.chunks.get([int(i) for i in ids[0]])
    return bundle.manifest.corpus["sha256"], [chunks[int(i)].chunk_id for i in ids[0]]


@pytest.fixture()
def config_path(tmp_path, tiny_embedder_dir) -> Path:
    return write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")


# --- bad corpora ---------------------------------------------------------------------------


def test_symlink_loop_and_broken_link_are_survived(tmp_path):
    root = make_corpus(tmp_path / "c", {"a.txt": "alpha text"})
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("beta text", encoding="utf-8")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    from indexer.corpus import read_corpus

    corpus = read_corpus(root)
    assert [d.doc_id for d in corpus.documents] == ["a.txt", "sub/b.txt"]
    assert corpus.skipped == [("dangling.txt", corpus.skipped[0][1])] and "unreadable" in corpus.skipped[0][1]


def test_very_large_file_is_skipped_with_a_reason(tmp_path):
    from indexer.corpus import read_corpus

    root = make_corpus(tmp_path / "c", {"small.txt": "ok", "huge.txt": "word " * 300_000})
    corpus = read_corpus(root, max_file_mb=1)
    assert [d.doc_id for d in corpus.documents] == ["small.txt"]
    assert "over the 1 MB limit" in corpus.skipped[0][1]


@pytest.mark.parametrize(
    ("docs", "error", "match"),
    [
        ({}, CorpusError, "no supported files"),
        ({"x.xyz": "data"}, CorpusError, "no supported files"),
        ({"x.pdf": "%PDF"}, CorpusError, "no readable document"),  # a corrupt PDF is skipped with its reason
        ({"empty.txt": ""}, CorpusError, "no readable document"),
    ],
)
def test_bad_corpus_leaves_the_index_untouched(tmp_path, config_path, tiny_corpus, docs, error, match):
    config = load_config(config_path)
    good = build_index(tiny_corpus, config).version_dir
    with pytest.raises(error, match=match):
        build_index(make_corpus(tmp_path / "bad", docs), config)
    assert current_version(tmp_path / "index") == good
    assert Pipeline(config).ask("vitamin").retrieved


def test_missing_manifest_is_reported(config_path, tiny_corpus, tmp_path):
    version = build_index(tiny_corpus, load_config(config_path)).version_dir
    (version / "manifest.json").unlink()
    with pytest.raises(IndexMissingError, match="manifest .* is missing"):
        Pipeline.from_yaml(config_path).ask("vitamin")


# --- failed, locked and killed builds ------------------------------------------------------------


def test_second_build_is_refused_while_one_holds_the_lock(config_path, tiny_corpus, tmp_path):
    (tmp_path / "index").mkdir()
    with FileLock(str(tmp_path / "index" / LOCK)):
        with pytest.raises(IndexLockedError, match="another build is running"):
            build_index(tiny_corpus, load_config(config_path))
    build_index(tiny_corpus, load_config(config_path))  # the lock is free again


@pytest.mark.parametrize("fail_at", ["save_embeddings", "publish"])
def test_failure_while_writing_keeps_the_old_index(config_path, tiny_corpus, tmp_path, monkeypatch, fail_at):
    config = load_config(config_path)
    build_index(tiny_corpus, config)
    before = live_state(tmp_path / "index", config)
    (tiny_corpus / "new.txt").write_text("a new document about rockets", encoding="utf-8")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "save_embeddings":
        monkeypatch.setattr(build_module.np, "save", boom)
    else:
        monkeypatch.setattr(build_module, "publish_version", boom)
    with pytest.raises(OSError, match="No space left"):
        build_index(tiny_corpus, config)
    assert live_state(tmp_path / "index", config) == before
    assert not list((tmp_path / "index").glob("*.tmp"))


BUILD_LOOP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from indexer.build import build_index
    from pipeline.config import load_config
    config = load_config({config!r})
    print("ready", flush=True)
    for i in range({rounds}):
        build_index({corpora!r}[i % 2], config, reuse=False)
        print("built", i, flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_at_any_point_leaves_a_loadable_index(tmp_path, config_path):
    config = load_config(config_path)
    old = make_corpus(tmp_path / "old",
                      {f"o{i}.txt": f"old document {i} " + " ".join(WORDS[i % 7 :]) for i in range(40)})
    new = make_corpus(
        tmp_path / "new", {f"n{i}.txt": f"new text {i} " + " ".join(WORDS[i % 5 :]) * 30 for i in range(1500)}
    )
    build_index(old, config)
    old_state = live_state(tmp_path / "index", config)
    script = BUILD_LOOP.format(root=str(ROOT), config=str(config_path), corpora=[str(new), str(new)], rounds=1)
    outcomes = []
    for delay in (0.5, 1.5, 3.0, 5.0, 8.0, 12.0):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        state = live_state(tmp_path / "index", config)  # loads and checks vectors vs chunks vs manifest
        assert state == old_state or state[0] != old_state[0], "a mix of versions"
        outcomes.append("old" if state == old_state else "new")
        if state != old_state:
            build_index(old, config)  # put the old index back for the next round
    # a normal build afterwards works: no stale lock, no leftover staging folders
    build_index(old, config)
    assert live_state(tmp_path / "index", config) == old_state
    assert not list((tmp_path / "index").glob("*.tmp"))
    assert "old" in outcomes  # at least one kill landed mid-build


@pytest.mark.slow
def test_ask_during_rebuilds_sees_one_consistent_version(tmp_path, config_path):
    corpus_a = make_corpus(tmp_path / "a", {f"a{i}.txt": f"alpha {i} " + " ".join(WORDS[i % 9 :]) for i in range(60)})
    corpus_b = make_corpus(tmp_path / "b", {f"b{i}.txt": f"beta {i} " + " ".join(WORDS[i % 8 :]) for i in range(90)})
    config = load_config(config_path, ["reranker.enabled=false"])
    build_index(corpus_a, config)
    script = BUILD_LOOP.format(root=str(ROOT), config=str(config_path), corpora=[str(corpus_b), str(corpus_a)],
                               rounds=4)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            result = Pipeline(config).ask("vitamin bone tea", top_k=50)
            prefixes = {hit.doc_id[0] for hit in result.retrieved}
            assert len(prefixes) == 1, f"hits from two versions: {prefixes}"
            counts = len(result.retrieved)
            assert counts == {"a": 60, "b": 90}[prefixes.pop()] or counts == 50
            seen.add(result.retrieved[0].doc_id[0])
    finally:
        proc.kill()
        proc.wait()
    assert seen == {"a", "b"}, "the reader should have seen both versions during the rebuilds"


# --- incremental updates -------------------------------------------------------------------


def compare_indexes(a: Path, b: Path, config) -> None:
    """Same chunk ids in the same rows, same vectors, same search results."""
    first = load_index(a, build_stage(config.index))
    second = load_index(b, build_stage(config.index))
    n = first.vectors.ntotal
    assert n == second.vectors.ntotal
    ids_a = [first.chunks.get([i])[i].chunk_id for i in range(n)]
    ids_b = [second.chunks.get([i])[i].chunk_id for i in range(n)]
    assert ids_a == ids_b
    vec_a, vec_b = np.load(first.version_dir / EMBEDDINGS), np.load(second.version_dir / EMBEDDINGS)
    np.testing.assert_allclose(vec_a, vec_b, rtol=1e-4, atol=1e-5)
    scores_a, found_a = first.vectors.search(vec_b, min(n, 5))
    scores_b, found_b = second.vectors.search(vec_b, min(n, 5))
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-4, atol=1e-5)
    # tie-aware: a swapped pair must have (nearly) equal scores
    mismatched = found_a != found_b
    assert np.all(np.abs(scores_a - scores_b)[mismatched] < 1e-4)


def test_update_adds_changes_removes_and_equals_a_full_rebuild(tmp_path, config_path):
    config = load_config(config_path)
    docs = {f"d{i}.txt": f"document {i} about " + " ".join(WORDS[i:]) for i in range(8)}
    corpus = make_corpus(tmp_path / "c", docs)
    build_index(corpus, config)
    docs["d1.txt"] = "document one now about tea and bread"
    del docs["d2.txt"]
    docs["d9.txt"] = "a brand new document about rockets"
    make_corpus(corpus, docs)
    report = build_index(corpus, config, update=True)
    assert {k: report.changes[k] for k in ("added", "changed", "removed", "unchanged")} == {
        "added": 1, "changed": 1, "removed": 1, "unchanged": 6,
    }
    bundle = load_index(tmp_path / "index", build_stage(config.index))
    chunks = bundle.chunks.get(list(range(bundle.vectors.ntotal))).values()
    assert report.changes["encoded_chunks"] == sum(c.doc_id in ("d1.txt", "d9.txt") for c in chunks)
    build_index(corpus, config, tmp_path / "full", reuse=False)
    compare_indexes(tmp_path / "index", tmp_path / "full", config)
    # an unchanged corpus encodes nothing
    assert build_index(corpus, config, update=True).changes["encoded_chunks"] == 0


def test_update_needs_a_compatible_index(tmp_path, config_path, tiny_corpus):
    with pytest.raises(IndexMissingError, match="--update needs an existing index"):
        build_index(tiny_corpus, load_config(config_path), update=True)
    build_index(tiny_corpus, load_config(config_path))
    with pytest.raises(IndexMismatchError, match=r"other embedder settings \(normalize\)"):
        build_index(tiny_corpus, load_config(config_path, ["embedder.normalize=false"]), update=True)
    # without --update the same change is a full re-encode
    report = build_index(tiny_corpus, load_config(config_path, ["embedder.normalize=false"]))
    assert report.changes["reused_chunks"] == 0


doc_text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 30), doc_text),
    st.tuples(st.just("edit"), st.integers(0, 30), doc_text),
    st.tuples(st.just("delete"), st.integers(0, 30), st.just("")),
)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.dictionaries(st.integers(0, 30), doc_text, min_size=1, max_size=6),
       updates=st.lists(st.lists(operation, min_size=1, max_size=4), min_size=1, max_size=3))
def test_random_update_sequences_equal_a_full_rebuild(tmp_path_factory, tiny_embedder_dir, initial, updates):
    tmp = tmp_path_factory.mktemp("prop")
    config = load_config(write_config(tmp / "c.yaml", str(tiny_embedder_dir), tmp / "index"))
    docs = {f"d{k}.txt": v for k, v in initial.items()}
    corpus = make_corpus(tmp / "corpus", docs)
    build_index(corpus, config)
    for step, batch in enumerate(updates):
        for op, key, text in batch:
            name = f"d{key}.txt"
            if op == "delete":
                docs.pop(name, None)
            else:
                docs[name] = text
        if not docs:
            docs["d0.txt"] = "bread"
        make_corpus(corpus, docs)
        build_index(corpus, config, update=True)
        build_index(corpus, config, tmp / f"full{step}", reuse=False)
        compare_indexes(tmp / "index", tmp / f"full{step}", config)
