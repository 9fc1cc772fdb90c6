"""The Milvus store against a real Milvus server over the network (not Milvus Lite's file).

The ``milvus`` package (2.3.5, "embedded Milvus": the standalone server binary; the ``milvus-server``
extra) starts a Milvus standalone on a free loopback port once per session (~11-16 s here). A collection
is built over a small corpus with the tiny embedder and must give the same results as FAISS on the same
corpus, filters included; then an incremental update that adds a file and removes one (the same as
FAISS after it, the old collections dropped); then a watched folder picks up a change; then a reader
whose network path to the server is cut gets one clear error. Knowledge bases created over HTTP on
Milvus answer as on FAISS through uploads and deletes.
"""

from __future__ import annotations

import platform
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("pymilvus", reason="needs the 'scale' extra: pip install -e '.[scale]'")
milvus = pytest.importorskip(
    "milvus", reason="needs the 'milvus-server' extra (the embedded Milvus server): pip install -e '.[milvus-server]'"
)

from indexer.build import build_index  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.errors import ServiceUnavailableError  # noqa: E402
from pipeline.filters import Filter  # noqa: E402
from pipeline.pipeline import Pipeline  # noqa: E402
from pipeline.store import current_version  # noqa: E402
from tests.conftest import write_config  # noqa: E402
from tests.test_milvus import assert_same_ranking  # noqa: E402

QUERIES = ["bone pain from low vitamin D", "programming language", "长城", "scurvy and bleeding gums"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """A Milvus standalone started in the background; :attr:`uri` waits until it answers."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.server = milvus.MilvusServer(data_dir=str(data), proxy_port=_free_port(), wait_for_started=False)
        self._start = time.monotonic()
        self.server.start()  # the process runs; models and corpora are prepared meanwhile
        self._uri: str | None = None

    @property
    def uri(self) -> str:
        if self._uri is None:
            self._wait()
            print(f"\nMilvus standalone answered {time.monotonic() - self._start:.1f}s after its start, "
                  f"on port {self.server.listen_port}")
            self._uri = f"http://127.0.0.1:{self.server.listen_port}"
        return self._uri

    def _wait(self, timeout: float = 120.0) -> None:
        """Until the server's health check answers; fail at once (with its log) if the process ends."""
        health = f"http://127.0.0.1:{self.server.webservice_port}/healthz"
        while True:
            proc = self.server.server_proc
            if proc is None or proc.poll() is not None or time.monotonic() - self._start > timeout:
                logs = self.data / "logs" / "milvus-stdout.log"
                errors = [line for line in (logs.read_text(errors="replace").splitlines() if logs.is_file() else [])
                          if "[ERROR]" in line or "[FATAL]" in line]
                self.server.stop()
                pytest.fail(f"the Milvus server did not start within {timeout:.0f}s: " + "\n".join(errors[-5:]))
            try:
                with urllib.request.urlopen(health, timeout=2) as answer:
                    if b"OK" in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus standalone for this session (stopped at its end); ``.uri`` once it answers."""
    if not (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")):
        pytest.skip("the embedded Milvus server (milvus 2.3.5) ships a Linux x86-64 binary only")
    with socket.socket() as probe:  # the embedded etcd's peer port is fixed: one embedded Milvus per machine
        try:
            probe.bind(("127.0.0.1", 2380))
        except OSError:
            pytest.skip("127.0.0.1:2380 is taken (another embedded Milvus or etcd runs here); the embedded "
                        "Milvus server needs it for its etcd")
    server = _Server(tmp_path_factory.mktemp("milvus-server"))
    yield server
    server.server.stop()


class _Forwarder:
    """A TCP relay on a free loopback port to ``upstream``: the network between a reader and the server,
    which :meth:`cut` takes away."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(); close() alone would not
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _configs(tmp_path: Path, embedder_dir: Path, uri: str, collection: str):
    faiss = load_config(write_config(tmp_path / "faiss.yaml", str(embedder_dir), tmp_path / "faiss"))
    path = write_config(tmp_path / "milvus.yaml", str(embedder_dir), tmp_path / "milvus")
    raw = yaml.safe_load(path.read_text())
    raw["index"] = {"type": "milvus", "path": str(tmp_path / "milvus"), "uri": uri, "collection": collection,
                    "batch_size": 7}  # several insert calls for a small corpus
    path.write_text(yaml.safe_dump(raw))
    return faiss, load_config(path)


def _same_results(faiss_config, milvus_config) -> None:
    faiss, milvus_pipe = Pipeline(faiss_config), Pipeline(milvus_config)
    for want, have in zip(faiss.retriever.search(QUERIES, 8), milvus_pipe.retriever.search(QUERIES, 8)):
        assert len(have) == len(want) > 0
        assert_same_ranking(have, want)
    for spec in (["source=code/*"], ["source=*.md"], ["doc_id=vitamin-d.md"]):
        flt = Filter.parse(spec)
        want = faiss.retriever.search(QUERIES[:2], 8, filter=flt)
        have = milvus_pipe.retriever.search(QUERIES[:2], 8, filter=flt)
        for w, h in zip(want, have):
            assert len(h) == len(w) > 0 and all(flt.matches(x.source, x.metadata, x.doc_id, x.page) for x in h)
            assert_same_ranking(h, w)


def _collections(uri: str) -> set[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        return set(client.list_collections())
    finally:
        client.close()


def test_a_collection_on_the_server_answers_as_faiss_through_updates_a_watch_and_a_lost_server(
    milvus_server, tmp_path, tiny_corpus, tiny_embedder_dir, one_torch_thread
):
    uri = milvus_server.uri
    faiss_config, milvus_config = _configs(tmp_path, tiny_embedder_dir, uri, "t_updates")
    build_index(tiny_corpus, faiss_config)
    first = build_index(tiny_corpus, milvus_config)
    assert first.manifest.index["uri"] == uri
    assert not (first.version_dir / "milvus.db").exists()  # the vectors live on the server
    _same_results(faiss_config, milvus_config)

    # An incremental update: one file added, one removed; the same as FAISS after it.
    (tiny_corpus / "tea.txt").write_text("Green tea contains caffeine and catechins.", encoding="utf-8")
    (tiny_corpus / "iron.txt").unlink()
    build_index(tiny_corpus, faiss_config, update=True)
    second = build_index(tiny_corpus, milvus_config, update=True)
    assert (second.changes["added"], second.changes["removed"]) == (1, 1)
    assert second.changes["encoded_chunks"] < second.manifest.counts["chunks"]
    _same_results(faiss_config, milvus_config)
    hits = Pipeline(milvus_config).retriever.search(["iron deficiency anemia", "green tea caffeine"], 50)
    assert all(h.doc_id != "iron.txt" for h in hits[0]) and hits[1][0].doc_id == "tea.txt"

    # A watched folder (events only, no first sync): a changed file is picked up and published as a third
    # version, which drops the first one's collection with its folder.
    pytest.importorskip("watchdog", reason="needs the 'watch' extra: pip install -e '.[watch]'")
    from indexer.watch import IndexSync

    synced: list = []
    watch = IndexSync(tiny_corpus, milvus_config, debounce=0.3, initial=False,
                      on_sync=lambda batch, report, error: synced.append((batch, report, error))).start()
    try:
        assert watch.ready.wait(30)
        (tiny_corpus / "vitamin-c.md").write_text("# Vitamin C\nOranges and peppers hold vitamin C.", encoding="utf-8")
        seconds = _wait_for(lambda: synced, 60, "the changed file")
        assert synced[0][2] is None and synced[0][0].changed == ("vitamin-c.md",), synced[0]
        kept = {p.name for p in (tmp_path / "milvus").glob("v-*")}
        assert kept == {second.version_dir.name, synced[0][1].version_dir.name}
        ours = {name for name in _collections(uri) if name.startswith("t_updates_")}
        assert ours == {f"t_updates_{name.replace('-', '_')}" for name in kept}
    finally:
        watch.stop()
    print(f"\nwatched change published on the Milvus server {seconds:.2f}s after the write")
    assert current_version(tmp_path / "milvus") == synced[0][1].version_dir
    build_index(tiny_corpus, faiss_config, update=True)
    _same_results(faiss_config, milvus_config)

    # A replica that reaches the server through the network, and loses it: one clear error.
    relay = _Forwarder(uri)
    reader = Pipeline(load_config(tmp_path / "milvus.yaml", [f"index.uri={relay.uri}"]))
    assert reader.retriever.search(["vitamin D"], 3)[0]
    relay.cut()
    with pytest.raises(ServiceUnavailableError, match=r"searching collection t_updates_v_\S+ failed at the Milvus "
                                                       r"server at http://127\.0\.0\.1:\d+ \(index\.uri\)"):
        reader.retriever.search(["vitamin D"], 3)


def _wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_server_collections_on_milvus_answer_as_on_faiss_through_uploads_and_deletes(
    milvus_server, tmp_path, tiny_corpus, tiny_embedder_dir, one_torch_thread
):
    """Two knowledge bases created over HTTP, one from a config on the Milvus server and one from the same
    config on FAISS: after the same uploads, and after deleting a document, they answer the same."""
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from server import create_app

    uri = milvus_server.uri
    faiss_config, milvus_config = _configs(tmp_path, tiny_embedder_dir, uri, "t_kb")
    build_index(tiny_corpus, faiss_config)  # the served configs' own indexes (the collections are new)
    build_index(tiny_corpus, milvus_config, reuse_from=tmp_path / "faiss")
    files = [("files", (p.name, p.read_bytes())) for p in sorted(tiny_corpus.rglob("*.md"))]

    def wait_job(client, job_id: str) -> dict:
        _wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] in ("done", "failed"), 60, job_id)
        return client.get(f"/v1/jobs/{job_id}").json()

    def hits(client, kb: str) -> list[list[tuple[str, float]]]:
        out = []
        for query in QUERIES:
            answer = client.post("/v1/search", json={"query": query, "top_k": 6, "collection": kb}).json()
            out.append([(h["chunk_id"], h["score"]) for h in answer["retrieved"]])
        return out

    app = create_app({"f": faiss_config, "m": milvus_config})
    with TestClient(app) as client:
        _wait_for(lambda: client.get("/readyz").status_code == 200, 60, "ready")
        for kb, config in (("kb-faiss", "f"), ("kb-milvus", "m")):
            assert client.post("/v1/collections", json={"name": kb, "config": config}).status_code == 201
            job = client.post(f"/v1/collections/{kb}/documents", files=files).json()["job"]
            assert wait_job(client, job["id"])["state"] == "done"
        _same_hits(hits(client, "kb-milvus"), hits(client, "kb-faiss"))
        for kb in ("kb-faiss", "kb-milvus"):
            job = client.delete(f"/v1/collections/{kb}/documents/vitamin-d.md").json()["job"]
            assert wait_job(client, job["id"])["state"] == "done"
        after = hits(client, "kb-milvus")
        _same_hits(after, hits(client, "kb-faiss"))
        assert not any(chunk.startswith("vitamin-d.md") for row in after for chunk, _ in row)
        versions = [p.name for p in (tmp_path / "collections" / "kb-milvus" / "index").glob("v-*")]
        ours = {name for name in _collections(uri) if name.startswith("t_kb_")}
        assert versions and {f"t_kb_{v.replace('-', '_')}" for v in versions} <= ours  # each kept version's
        assert client.delete("/v1/collections/kb-milvus").status_code == 200
        left = {name for name in _collections(uri) if name.startswith("t_kb_")}
        assert not {f"t_kb_{v.replace('-', '_')}" for v in versions} & left  # dropped with the collection


def _same_hits(have: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]], tol: float = 1e-5) -> None:
    """Per query: the same scores in order, and the same chunks up to ties."""
    for h, w in zip(have, want):
        assert len(h) == len(w) > 0
        assert all(abs(a[1] - b[1]) <= tol for a, b in zip(h, w)), (h, w)
        scores = dict(w)
        assert all(chunk in scores or score <= min(scores.values()) + tol for chunk, score in h), (h, w)
