"""The watch mode (indexer/watch.py, ``rag-build CORPUS --watch``) with real processes and real files.

Each change made in the folder (added, changed, removed, renamed file) must show up in the published
index within a few seconds, with OS events (inotify) and with the polling fallback; editors' temporary
files publish nothing; a file that fails to read keeps its documents; another writer's lock is waited
for; SIGTERM stops the process cleanly with the index intact and the lock released.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("watchdog", reason="needs the 'watch' extra: pip install -e '.[watch]'")

from filelock import FileLock

from indexer.watch import Batch, CorpusWatcher, is_ignored
from pipeline.store import CHUNKS, CURRENT, ChunkStore, current_version
from tests.conftest import ROOT, TINY_DOCS, write_config

PICKUP_S = 20.0  # generous ceiling on a busy 2-core machine; typical pick-up is 1-3 s (printed with -s)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _docs(index: Path) -> dict[str, str]:
    """doc_id -> its chunks' text joined, of the live version (empty before the first build)."""
    try:
        version = current_version(index)
    except Exception:
        return {}
    store = ChunkStore(version / CHUNKS)
    try:
        out: dict[str, str] = {}
        for doc_id, text in store.doc_texts():
            out[doc_id] = out.get(doc_id, "") + " " + text
        return out
    finally:
        store.close()


def _wait(what: str, condition, timeout: float = PICKUP_S, out: _Output | None = None) -> float:
    """Seconds until ``condition()`` holds; fails with ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}\n" + (out.text() if out else "")
        time.sleep(0.05)
    return time.monotonic() - start


class _Output:
    """The lines a subprocess prints, collected by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


# -- the watcher alone: which events make which batch ----------------------------------------------------


def test_is_ignored_names_editor_and_download_temporaries():
    for name in (".notes.md.swp", ".notes.md.swx", "notes.md~", ".#notes.md", "#notes.md#", "~$report.docx",
                 "report.pdf.part", "report.pdf.crdownload", "notes.md.tmp", "4913", ".hidden.md", ".~lock.a.docx#"):
        assert is_ignored(name), name
    for name in ("notes.md", "report.pdf", "a~b.txt", "4914", "part.md", "v1.2.txt"):
        assert not is_ignored(name), name


@pytest.mark.parametrize("polling", [False, True], ids=["events", "polling"])
def test_watcher_batches_added_changed_removed_renamed(tmp_path, polling):
    root = tmp_path / "docs"
    _write(root, "a.md", "alpha")
    _write(root, "b.txt", "beta")
    _write(root, "sub/c.md", "gamma")
    with CorpusWatcher(root, debounce=0.3, polling=polling, poll_interval=0.2, exclude=[root / "index"]) as watcher:
        assert watcher.mode == ("polling" if polling else "inotify")
        time.sleep(0.3)  # the polling observer's first snapshot
        _write(root, "new.md", "delta")
        (root / "a.md").write_text("alpha, changed", encoding="utf-8")
        (root / "b.txt").unlink()
        (root / "sub/c.md").rename(root / "sub/c2.md")
        for rel in (".a.md.swp", "a.md~", ".#a.md", "x.pdf.part", "y.pdf.crdownload", "#a.md#", "picture.png",
                    "index/manifest.md"):
            _write(root, rel, "noise")
        batch = watcher.next_batch(timeout=10)
        assert batch == Batch(changed=("a.md", "new.md", "sub/c2.md"), removed=("b.txt", "sub/c.md"))
        # Only ignored files change: no batch.
        _write(root, "a.md~", "more noise")
        (root / ".a.md.swp").unlink()
        assert watcher.next_batch(timeout=1.5) is None
        # A burst of writes to one file is one batch, handed out once the folder is quiet.
        start = time.monotonic()
        for i in range(5):
            (root / "a.md").write_text(f"alpha {i}", encoding="utf-8")
            time.sleep(0.1)
        batch = watcher.next_batch(timeout=10)
        assert batch == Batch(changed=("a.md",)) and time.monotonic() - start >= 0.7


def test_watcher_stops_a_waiting_next_batch(tmp_path):
    watcher = CorpusWatcher(tmp_path, debounce=0.2).start()
    stop = threading.Event()
    got: list = []
    thread = threading.Thread(target=lambda: got.append(watcher.next_batch(stop)))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    watcher.stop()
    assert not thread.is_alive() and got == [None]


# -- rag-build --watch as a real process -----------------------------------------------------------------


class _Run:
    """``rag-build CORPUS --watch`` on a fresh copy of the tiny corpus, in a subprocess."""

    def __init__(self, root: Path, tiny_embedder_dir: Path, mode: str) -> None:
        self.mode, self.corpus, self.index = mode, root / "corpus", root / "index"
        for rel, text in TINY_DOCS.items():
            _write(self.corpus, rel, text)
        config = write_config(root / "tiny.yaml", str(tiny_embedder_dir), self.index)
        # Polling is asked for by the environment variable here (by --poll in the README).
        env = {"RAG_WATCH_POLL": "1"} if mode == "polling" else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "commands.build", str(self.corpus), "--config", str(config), "--watch",
             "--debounce", "0.3", "--poll-interval", "0.3"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        )
        self.out = _Output(self.proc)
        self.times: dict[str, float] = {}

    def docs(self) -> dict[str, str]:
        return _docs(self.index)

    def stop(self) -> None:
        """SIGTERM: the process ends with 0, the index intact, no unfinished version, the lock free."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.out.text()
        assert "stopped watching" in self.out.text()
        assert not list(self.index.glob("v-*.tmp")), "an unfinished version was left behind"
        FileLock(str(self.index / ".lock"), timeout=0).acquire()  # the build lock was released
        assert self.docs(), "the index is still readable"


def _wait_all(runs: list[_Run], what: str, condition, timeout: float = PICKUP_S) -> None:
    """Until ``condition(run)`` holds for every run; each run's seconds go to ``run.times[what]``."""
    start = time.monotonic()
    waiting = list(runs)
    while waiting:
        for run in list(waiting):
            if condition(run):
                run.times[what] = time.monotonic() - start
                waiting.remove(run)
        assert time.monotonic() - start < timeout or not waiting, (
            f"not within {timeout}s: {what} ({waiting[0].mode})\n{waiting[0].out.text()}")
        time.sleep(0.05)


def test_rag_build_watch_keeps_the_index_in_sync(tmp_path, tiny_embedder_dir):
    """Both observers side by side: inotify events and the polling fallback, each in its own process."""
    runs = [_Run(tmp_path / mode, tiny_embedder_dir, mode) for mode in ("inotify", "polling")]
    try:
        _wait_all(runs, "first build", lambda r: set(r.docs()) == set(TINY_DOCS), timeout=120)
        _wait_all(runs, "watching", lambda r: f"watching {r.corpus} ({r.mode})" in r.out.text(), timeout=10)
        for run in runs:
            run.times.clear()

        for run in runs:
            _write(run.corpus, "new/zinc.md", "# Zinc\nZinc deficiency slows wound healing and weakens taste.")
        _wait_all(runs, "added", lambda r: "new/zinc.md" in r.docs())

        before = runs[0].docs()["vitamin-c.md"]
        for run in runs:
            _write(run.corpus, "vitamin-c.md", "# Vitamin C\nPython is a snake; iron and vitamin D are not.")
        _wait_all(runs, "changed", lambda r: r.docs()["vitamin-c.md"] != before)
        assert all("snake" in run.docs()["vitamin-c.md"] for run in runs)

        for run in runs:
            (run.corpus / "iron.txt").unlink()
        _wait_all(runs, "removed", lambda r: "iron.txt" not in r.docs())

        for run in runs:
            (run.corpus / "code/python.md").rename(run.corpus / "code/py.md")
        _wait_all(runs, "renamed", lambda r: "code/py.md" in (d := r.docs()) and "code/python.md" not in d)

        # Editors' temporaries and hidden files publish no version.
        live = [(run.index / CURRENT).read_text() for run in runs]
        for run in runs:
            for rel in (".vitamin-d.md.swp", "vitamin-d.md~", ".#vitamin-d.md", "#vitamin-d.md#", "big.pdf.part",
                        "big.pdf.crdownload", "vitamin-d.md.tmp", ".hidden/notes.md", "4913"):
                _write(run.corpus, rel, "editor noise")
        time.sleep(1.2)
        assert [(run.index / CURRENT).read_text() for run in runs] == live, "a temporary file triggered an update"

        # A file that fails to read (here: emptied, as an editor does before writing) keeps its documents.
        before = runs[0].docs()["vitamin-d.md"]
        for run in runs:
            (run.corpus / "vitamin-d.md").write_text("", encoding="utf-8")
            _write(run.corpus, "late.txt", "A late arrival about magnesium.")  # the same batch adds a file
        _wait_all(runs, "batch with a failed file", lambda r: "late.txt" in r.docs())
        assert all(run.docs()["vitamin-d.md"] == before for run in runs)
        _wait_all(runs, "kept line", lambda r: "kept the indexed version of vitamin-d.md" in r.out.text(), timeout=5)
        for run in runs:
            del run.times["kept line"]

        # Another writer (a build, an upload job) holds the index: the batch waits for it, then goes.
        locks = [FileLock(str(run.index / ".lock"), timeout=5) for run in runs]
        for lock, run in zip(locks, runs):
            lock.acquire()
            _write(run.corpus, "while-locked.md", "Written while another writer held the lock.")
        time.sleep(1.5)
        assert all("while-locked.md" not in run.docs() for run in runs)
        for lock in locks:
            lock.release()
        _wait_all(runs, "after the lock", lambda r: "while-locked.md" in r.docs())

        for run in runs:
            print(f"\n{run.mode} pick-up seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in run.times.items()))
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.stop()
    assert all(set(run.docs()) == set(TINY_DOCS) - {"iron.txt", "code/python.md"} | {
        "new/zinc.md", "code/py.md", "late.txt", "while-locked.md"} for run in runs)


# -- a served collection with a watch: section ------------------------------------------------------------


def test_watch_section_is_validated(tmp_path):
    from pipeline.config import load_config, parse_config
    from pipeline.errors import ConfigError

    base = {"embedder": {"type": "sentence-transformers", "model": "x"}, "retriever": {"type": "dense"},
            "index": {"type": "faiss"}}
    with pytest.raises(ConfigError, match="'watch' must be a mapping"):
        parse_config({**base, "watch": "docs/"})
    with pytest.raises(ConfigError, match=r"watch\.debounce"):
        parse_config({**base, "watch": {"folder": "docs", "debounce": 0}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**base, "watch": {"folder": "docs", "polling": True}}))
    watch = load_config(path).watch
    assert watch.folder == str(tmp_path / "docs") and watch.polling is True  # relative to the config file


def test_a_served_collection_keeps_its_watched_folder_in_sync(tmp_path, tiny_embedder_dir, one_torch_thread):
    """rag-serve with a config's watch: section: each change becomes an ingestion job of the collection
    (GET /v1/jobs), the documents follow the folder, and the watch thread stops with the server."""
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from indexer.build import build_index
    from pipeline.config import load_config
    from server import create_app

    corpus = tmp_path / "folder"
    for rel, text in TINY_DOCS.items():
        _write(corpus, rel, text)
    config_path = write_config(tmp_path / "tiny.yaml", str(tiny_embedder_dir), tmp_path / "index",
                               watch={"folder": str(corpus), "debounce": 0.3})
    config = load_config(config_path)
    build_index(corpus, config)
    times = {}
    with TestClient(create_app({"tiny": config})) as client:
        _wait("ready", lambda: client.get("/readyz").status_code == 200, timeout=60)

        def docs() -> set[str]:
            return {d["id"] for d in client.get("/v1/collections/tiny/documents").json()["documents"]}

        _wait("the first sync job", lambda: any(j["state"] == "done" for j in
                                                client.get("/v1/collections/tiny").json()["jobs"]), timeout=60)
        _write(corpus, "new/zinc.md", "# Zinc\nZinc deficiency slows wound healing.")
        times["added"] = _wait("added", lambda: "new/zinc.md" in docs())
        (corpus / "iron.txt").unlink()
        times["removed"] = _wait("removed", lambda: "iron.txt" not in docs())
        (corpus / "code/python.md").rename(corpus / "code/py.md")
        times["renamed"] = _wait("renamed", lambda: {"code/py.md"} <= (d := docs()) and "code/python.md" not in d)
        jobs = client.get("/v1/collections/tiny").json()["jobs"]
        assert all(job["state"] == "done" for job in jobs) and len(jobs) >= 4, jobs
        hits = client.post("/v1/search", json={"query": "zinc wound healing", "top_k": 3}).json()
        assert "new/zinc.md" in json.dumps(hits)
    assert not [t for t in threading.enumerate() if t.name.startswith("watch ")], "a watch thread outlived the server"
    print("\nserved collection pick-up seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


def test_sync_keeps_the_documents_of_files_that_fail_to_read(tmp_path, tiny_embedder_dir, one_torch_thread):
    """A file that turns unreadable (binary, not UTF-8) keeps its indexed documents and vectors, a JSONL line
    that fails keeps its document; a removed file leaves; a plain build (keep_failed off) drops them."""
    from indexer.build import build_index
    from indexer.watch import sync
    from pipeline.config import load_config

    corpus = tmp_path / "docs"
    for rel, text in TINY_DOCS.items():
        _write(corpus, rel, text)
    _write(corpus, "lines.jsonl", '{"_id": "j1", "text": "Iodine keeps the thyroid working."}\n'
                                  '{"_id": "j2", "text": "Selenium is a trace element."}\n')
    config = load_config(write_config(tmp_path / "tiny.yaml", str(tiny_embedder_dir), tmp_path / "index"))
    first = sync(corpus, config)
    assert {"j1", "j2", "iron.txt"} <= set(_docs(tmp_path / "index"))
    before = _docs(tmp_path / "index")

    (corpus / "iron.txt").write_bytes(b"Iron\x00\x01 binary now")  # a binary .txt: skipped, kept
    # JSONL is read line by line: the document of the line that fails now is kept; the file has no second
    # line any more, so the document that was there leaves.
    (corpus / "lines.jsonl").write_bytes(b"\xff\xfe not UTF-8 at all")
    (corpus / "vitamin-c.md").unlink()  # removed: leaves
    report = sync(corpus, config)
    docs = _docs(tmp_path / "index")
    assert report.kept == ["iron.txt", "lines.jsonl:1"], report.kept
    assert docs["iron.txt"] == before["iron.txt"] and docs["j1"] == before["j1"]
    assert "vitamin-c.md" not in docs and "j2" not in docs
    assert report.changes["encoded_chunks"] == 0  # the kept chunks reuse their vectors
    assert report.manifest.counts["documents"] == first.manifest.counts["documents"] - 2

    plain = build_index(corpus, config, update=True)
    assert plain.kept == [] and not {"iron.txt", "j1"} & set(_docs(tmp_path / "index"))


def test_the_watcher_polls_when_os_events_cannot_start(tmp_path, monkeypatch):
    """inotify limits used up (ENOSPC at start): a warning, then polling; the batches are the same."""
    import errno

    import watchdog.observers

    class Exhausted(watchdog.observers.Observer):
        def start(self):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Exhausted)
    monkeypatch.delenv("RAG_WATCH_POLL", raising=False)
    with CorpusWatcher(tmp_path, debounce=0.2, poll_interval=0.2) as watcher:
        assert watcher.mode == "polling"
        time.sleep(0.3)
        _write(tmp_path, "a.md", "alpha")
        assert watcher.next_batch(timeout=10) == Batch(changed=("a.md",))
