"""Knowledge bases over HTTP (issue 25): collections, uploads, jobs, deletions, keys and limits.

Everything runs against real ``scripts/serve.py`` processes (uvicorn on free loopback ports) with the
tiny models, real PDF/HTML/Markdown files and multipart uploads through httpx: queries run in a
thread throughout uploads and deletions and none may fail; a second server on the same data folder
writes the same collection at the same time; a server is killed with SIGKILL in the middle of a
job and the last published version keeps answering until a restarted server finishes the job.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi", reason="needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("python_multipart", reason="needs python-multipart (the 'serve' extra)")
httpx = pytest.importorskip("httpx")

from filelock import FileLock  # noqa: E402

from indexer.build import build_index  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.pipeline import Pipeline  # noqa: E402
from pipeline.store import CHUNKS, ChunkStore, current_version  # noqa: E402
from server.knowledge import Knowledge  # noqa: E402
from tests.conftest import ROOT, TINY_DOCS, wait_until_ready, write_config  # noqa: E402
from tests.test_formats import ARTICLE, make_pdf  # noqa: E402

MASTER = {"Authorization": "Bearer master-key"}
READ = {"Authorization": "Bearer kb-reader"}
WRITE = {"Authorization": "Bearer kb-writer"}
KEYS = {"RAG_API_KEY": "master-key", "KB_READ": "kb-reader", "KB_WRITE": "kb-writer"}
QUERY = "how do I install the widget on linux"


def write_docs(root: Path, docs: dict[str, str]) -> Path:
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real ``scripts/serve.py`` process on a free loopback port; its output goes to a log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    **(env or {})}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "serve.py"), "--config", f"tiny={config}",
                 "--port", str(self.port)], env=full_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self.proc, self.base, 90, 0.1)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def client(self, headers=None) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=headers or MASTER, timeout=60)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_job(http: httpx.Client, job_id: str, timeout: float = 90, until=("done", "failed")) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job's state (or stage) is one of ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in until or job.get("stage") in until:
            return job
        assert time.monotonic() < deadline, f"job did not reach {until}: {job}"
        time.sleep(0.1)


def upload(http: httpx.Client, collection: str, paths: list[Path], names: list[str] | None = None):
    names = names or [p.name for p in paths]
    files = [("files", (name, p.read_bytes())) for name, p in zip(names, paths)]
    return http.post(f"/v1/collections/{collection}/documents", files=files)


class Asker(threading.Thread):
    """Asks in a loop until stopped; keeps every status and index version it saw."""

    def __init__(self, base: str, bodies: list[dict]) -> None:
        super().__init__(daemon=True)
        self.base, self.bodies = base, bodies
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self.seen: list[tuple[str | None, str]] = []  # (collection, index version) of each answer
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=MASTER, timeout=60) as http:
            i = 0
            while not self._halt.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += 1
                response = http.post("/v1/ask", json=body)
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(response.json()["index_version"])
                    self.seen.append((body.get("collection"), response.json()["index_version"]))
                else:
                    self.errors.append(response.text[:300])

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


@pytest.fixture(scope="module")
def kb(tmp_path_factory, tiny_embedder_dir, tiny_reranker_dir):
    """The default index (tiny corpus), the files to upload, and server A over them."""
    tmp = tmp_path_factory.mktemp("kb")
    corpus = write_docs(tmp / "corpus", TINY_DOCS)
    config = write_config(
        tmp / "tiny.yaml", str(tiny_embedder_dir), tmp / "index", str(tiny_reranker_dir),
        server={"data_dir": str(tmp / "data"), "max_upload_mb": 0.25, "max_upload_files": 4, "max_jobs": 3,
                "cache_size": 0,
                "api_keys": [{"key_env": "KB_READ", "role": "read", "collections": ["kb"]},
                             {"key_env": "KB_WRITE", "role": "write", "collections": ["kb"]}]})
    build_index(corpus, load_config(config))
    files = tmp / "files"
    files.mkdir()
    make_pdf(files / "widget.pdf", [
        ("Overview", "The widget is a small command line tool for moving files between machines."),
        ("Installation", "To install the widget on Linux run apt-get install widget and start the service."),
    ])
    (files / "guide.html").write_text(ARTICLE, encoding="utf-8")
    (files / "notes.md").write_text("# Release notes\nVersion 2 adds streaming answers to the widget.\n")
    (files / "copy-of-notes.md").write_bytes((files / "notes.md").read_bytes())
    (files / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    for i in range(6):
        (files / f"extra-{i}.txt").write_text(f"Extra note {i}: the widget supports plugin number {i}.\n")
    state = {"tmp": tmp, "config": config, "files": files, "server": Server(config, tmp / "server-a.log", KEYS),
             "data": tmp / "data"}
    yield state
    state["server"].stop()  # the one running now (a test restarts it)


def test_collections_are_listed_created_and_the_default_answers_as_before(kb):
    with kb["server"].client() as http:
        listing = http.get("/v1/collections").json()
        assert listing["default"] == "tiny"
        assert [(c["name"], c["managed"], c["documents"]) for c in listing["collections"]] == [("tiny", False, 5)]
        created = http.post("/v1/collections", json={"name": "kb", "config": "tiny"})
        assert created.status_code == 201, created.text
        assert created.json() | {"created_at": None} == {
            "name": "kb", "config": "tiny", "default": False, "managed": True, "documents": 0, "chunks": 0,
            "index_version": None, "created_at": None}
        assert http.post("/v1/collections", json={"name": "kb"}).status_code == 409
        assert http.post("/v1/collections", json={"name": "tiny"}).status_code == 409
        assert http.post("/v1/collections", json={"name": "../etc"}).json()["error"] == "invalid_request"
        assert http.post("/v1/collections", json={"name": "x", "config": "nope"}).status_code == 422
        # today's request, unchanged: no collection, the config's own index
        plain = http.post("/v1/ask", json={"query": "vitamin D", "top_k": 3})
        assert plain.status_code == 200 and "collection" not in plain.json()
        same = http.post("/v1/ask", json={"query": "vitamin D", "top_k": 3, "collection": "tiny"}).json()
        assert [h["chunk_id"] for h in same["reranked"]] == [h["chunk_id"] for h in plain.json()["reranked"]]
        empty = http.post("/v1/ask", json={"query": "widget", "collection": "kb"})
        assert (empty.status_code, empty.json()["error"]) == (409, "empty_collection")
        unknown = http.post("/v1/search", json={"query": "widget", "collection": "nope"})
        assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
        docs = http.get("/v1/collections/tiny/documents").json()["documents"]
        assert {d["id"] for d in docs} == set(TINY_DOCS) and all(d["chunks"] > 0 for d in docs)


def test_upload_follow_ask_replace_and_delete_while_queries_run(kb):
    files, server = kb["files"], kb["server"]
    with server.client() as http:
        response = upload(http, "kb", [files / "widget.pdf", files / "guide.html", files / "notes.md"])
        assert response.status_code == 202, response.text
        job = wait_job(http, response.json()["job"]["id"])
        assert job["state"] == "done", job
        assert job["progress"]["files_read"] == 3 and job["progress"]["chunks_encoded"] > 0
        assert job["progress"]["chunks_encoded"] == job["progress"]["chunks_total"]
        first_version = job["version"]
        docs = {d["id"]: d for d in http.get("/v1/collections/kb/documents").json()["documents"]}
        assert set(docs) == {"widget.pdf", "guide.html", "notes.md"}
        assert (docs["widget.pdf"]["format"], docs["widget.pdf"]["pages"]) == ("pdf", 2)
        assert docs["guide.html"]["format"] == "html" and all(d["chunks"] > 0 for d in docs.values())
        assert all(d["state"] == "indexed" and d["indexed_at"] for d in docs.values())

        asker = Asker(server.base, [{"query": QUERY, "collection": "kb", "top_k": 8},
                                    {"query": "vitamin D", "top_k": 3}])
        asker.start()
        try:
            answer = http.post("/v1/search", json={"query": QUERY, "collection": "kb", "top_k": 50,
                                                   "filter": {"source": "*.pdf"}}).json()
            pages = {h["page"] for h in answer["retrieved"] if h["source"] == "widget.pdf"}
            assert pages == {1, 2} and answer["collection"] == "kb"

            # the same content again, under another name: recognised, not indexed twice
            dup = upload(http, "kb", [files / "copy-of-notes.md"])
            assert dup.status_code == 200 and dup.json()["job"] is None
            assert dup.json()["files"][0] | {"sha256": None} == {
                "name": "copy-of-notes.md", "sha256": None, "bytes": 64, "state": "duplicate",
                "duplicate_of": "notes.md"}

            # a broken file under the name of an indexed one: reported, and the old document stays
            bad = upload(http, "kb", [files / "broken.pdf", files / "extra-0.txt"], ["widget.pdf", "extra-0.txt"])
            assert bad.status_code == 202
            job = wait_job(http, bad.json()["job"]["id"])
            assert job["state"] == "done" and [f["file"] for f in job["failures"]] == ["widget.pdf"]
            assert "PDF" in job["failures"][0]["reason"]
            docs = {d["id"]: d for d in http.get("/v1/collections/kb/documents").json()["documents"]}
            assert docs["widget.pdf"]["pages"] == 2 and docs["widget.pdf"]["state"] == "indexed"
            assert "extra-0.txt" in docs
            hits = http.post("/v1/search", json={"query": QUERY, "collection": "kb", "top_k": 30}).json()["retrieved"]
            assert "widget.pdf" in {h["source"] for h in hits}

            deleted = http.delete("/v1/collections/kb/documents/guide.html")
            assert deleted.status_code == 202
            job = wait_job(http, deleted.json()["job"]["id"])
            assert job["state"] == "done" and job["progress"]["removed"] == 1
            listing = http.get("/v1/collections/kb/documents").json()["documents"]
            assert "guide.html" not in {d["id"] for d in listing}
            hits = http.post("/v1/search", json={"query": "guide", "collection": "kb", "top_k": 50}).json()["retrieved"]
            assert "guide.html" not in {h["source"] for h in hits} and hits

            # deleted and uploaded again before the deletion ran: not a duplicate, and there at the end
            gone = http.delete("/v1/collections/kb/documents/notes.md").json()["job"]["id"]
            again = upload(http, "kb", [files / "notes.md"])
            assert again.json()["files"][0]["state"] == "queued", again.text
            assert wait_job(http, gone)["state"] == "done"
            job = wait_job(http, again.json()["job"]["id"])
            assert job["state"] == "done"
            assert [(f["name"], f["state"]) for f in job["files"]] == [("notes.md", "indexed")]
            last_version = job["version"]
            deadline = time.monotonic() + 30  # a question asked after the last job answers from its version
            while last_version not in {v for c, v in asker.seen if c == "kb"} and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            asker.stop()
    with server.client() as http:
        metrics = http.get("/metrics").text
    assert 'rag_ingest_jobs_total{state="done"} 5.0' in metrics  # two uploads, two deletions, one upload again
    assert 'rag_ingest_files_total{outcome="failed"} 1.0' in metrics
    assert asker.statuses and set(asker.statuses) == {200}, asker.errors[:3]
    kb_versions = [v for c, v in asker.seen if c == "kb"]
    assert kb_versions == sorted(kb_versions) and kb_versions[-1] == last_version  # never back to an older one
    assert first_version <= kb_versions[0]  # how many versions it saw depends on the machine's speed
    assert len({v for c, v in asker.seen if c is None}) == 1  # the default index never moved
    assert "Traceback" not in server.output()


def _status(response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]


def test_hostile_inputs_get_json_4xx_and_leave_nothing(kb):
    files, server = kb["files"], kb["server"]
    incoming = kb["data"] / "kb" / "incoming"
    before = sorted(p.name for p in incoming.iterdir())
    md = (files / "notes.md").read_bytes()
    with server.client() as http:
        def send(names, data=md):
            return http.post("/v1/collections/kb/documents", files=[("files", (n, data)) for n in names])

        hostile = ("../escape.md", "..\\escape.md", "a/b.md", ".hidden.md", "/etc/passwd.md", "..", "长" * 70 + ".md")
        for name in hostile:
            assert _status(send([name])) == (400, "invalid_file_name"), name
        raw = (b'--xx\r\nContent-Disposition: form-data; name="files"; filename="bad\x01name.md"\r\n\r\nx\r\n'
               b'--xx--\r\n')  # a control character, sent as is (httpx would escape it)
        assert _status(http.post("/v1/collections/kb/documents", content=raw, headers={
            "content-type": "multipart/form-data; boundary=xx"})) == (400, "invalid_file_name")
        assert _status(send(["ok.md", "../x.md"])) == (400, "invalid_file_name")  # nothing of it is kept
        assert _status(send(["tool.exe"])) == (415, "unsupported_format")
        assert _status(send(["data.jsonl"])) == (415, "unsupported_format")
        assert _status(send(["big.txt"], b"x" * 300_000)) == (413, "too_large")
        assert _status(send([f"n{i}.md" for i in range(5)])) == (413, "too_many_files")
        assert _status(send(["a.md", "a.md"])) == (422, "invalid_request")
        assert _status(http.post("/v1/collections/kb/documents", content=b"--xx\r\nbroken", headers={
            "content-type": "multipart/form-data; boundary=xx"}))[0] in (400, 422)
        assert _status(http.post("/v1/collections/kb/documents", content=b"--", headers={
            "content-type": "multipart/form-data"}))[0] == 400
        assert _status(http.post("/v1/collections/kb/documents", json={"files": ["a.md"]})) == (
            415, "unsupported_media_type")
        assert _status(http.post("/v1/collections/kb/documents", data={"name": "x"},
                                 files=[("other", ("a.md", md))])) == (422, "invalid_request")
        assert _status(http.post("/v1/collections/nope/documents", files=[("files", ("a.md", md))])) == (
            404, "not_found")
        assert _status(http.post("/v1/collections/tiny/documents", files=[("files", ("a.md", md))])) == (
            409, "read_only_collection")
        assert _status(http.delete("/v1/collections/kb/documents/nope.md")) == (404, "not_found")
        assert _status(http.delete("/v1/collections/kb/documents/../../tiny.yaml")) == (404, "not_found")
        assert _status(http.get("/v1/jobs/..%2F..%2Ftiny")) == (404, "not_found")
        assert _status(http.delete("/v1/collections/tiny")) == (409, "read_only_collection")
        chat = {"messages": [{"role": "user", "content": "widget?"}]}
        assert _status(http.post("/v1/chat/completions", json={**chat, "collection": "nope"})) == (404, "not_found")
        assert _status(http.post("/v1/chat/completions", json={**chat, "collection": "kb"})) == (400, "unsupported")
        body = 12 * 2**20
        too_big = http.post("/v1/collections/kb/documents", content=b"x" * body, headers={
            "content-type": "multipart/form-data; boundary=xx"})
        assert _status(too_big) == (413, "too_large")
    # keys: none, unknown, a read key writing, a key outside its collections
    with httpx.Client(base_url=server.base, timeout=30) as anon:
        assert _status(anon.post("/v1/ask", json={"query": "widget", "collection": "kb"})) == (401, "unauthorized")
        assert _status(anon.get("/v1/collections", headers={"Authorization": "Bearer nope"})) == (
            401, "unauthorized")
        assert _status(anon.post("/v1/collections/kb/documents", headers=READ,
                                 files=[("files", ("r.md", md))])) == (403, "forbidden")
        assert anon.post("/v1/ask", headers=READ, json={"query": "widget", "collection": "kb"}).status_code == 200
        assert _status(anon.post("/v1/ask", headers=READ, json={"query": "widget"})) == (403, "forbidden")
        assert _status(anon.post("/v1/collections", headers=WRITE, json={"name": "other"})) == (403, "forbidden")
        # reranking with a collection's config: read on that collection
        rerank = {"query": "widget", "documents": ["install the widget", "bake bread"], "collection": "kb"}
        answer = anon.post("/v1/rerank", headers=READ, json=rerank).json()
        assert answer["meta"] | {"config": "tiny", "collection": "kb"} == answer["meta"]
        assert _status(anon.post("/v1/rerank", headers=READ, json={**rerank, "collection": "tiny"})) == (
            403, "forbidden")
        assert _status(anon.post("/rerank", headers=READ, json={"query": "w", "texts": ["a"], "collection": "nope"})
                       ) == (403, "forbidden")
        assert [c["name"] for c in anon.get("/v1/collections", headers=READ).json()["collections"]] == ["kb"]
        assert anon.get("/v1/collections/kb/documents", headers=READ).status_code == 200
        assert _status(anon.delete("/v1/collections/kb/documents/notes.md", headers=READ)) == (403, "forbidden")
    assert sorted(p.name for p in incoming.iterdir()) == before
    assert not (kb["tmp"] / "escape.md").exists() and "Traceback" not in server.output()


def _until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _index_documents(index: Path) -> dict[str, int]:
    store = ChunkStore(current_version(index) / CHUNKS)
    try:
        counts: dict[str, int] = {}
        for doc_id, _ in store.doc_texts():
            counts[doc_id] = counts.get(doc_id, 0) + 1
        return counts
    finally:
        store.close()


RECEIVER = """
import sys
from pathlib import Path
from pipeline.config import load_config
from server.knowledge import Knowledge
config = load_config(sys.argv[1])
knowledge = Knowledge({"tiny": config}, {"tiny": Path(config.index.params.path)}, config.server)
print("ready", flush=True)
knowledge.stage_upload("kb", [("slow.md", sys.stdin.buffer)])
"""


def _killed_while_receiving(kb) -> str:
    """A writer killed with SIGKILL while an upload's bytes come in (its stream: a pipe we fill slowly)."""
    jobs = kb["data"] / "kb" / "jobs"
    before = set(jobs.glob("j-*.json"))
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(kb["config"])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.stdin.write(b"# Slow\n" + b"the widget " * 5000)
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not (new := set(jobs.glob("j-*.json")) - before):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        job = new.pop().stem
        assert (kb["data"] / "kb" / "incoming" / job / "slow.md").exists()
    finally:
        proc.kill()
        proc.wait()
    return job


def test_two_writers_on_one_collection_and_sigkill_mid_job_loses_nothing(kb):
    files, a = kb["files"], kb["server"]
    index = kb["data"] / "kb" / "index"
    config = load_config(kb["config"])
    # the second writer: this test process, through the same API a watched folder uses, on the same data folder
    other = Knowledge({"tiny": config}, {"tiny": Path(config.index.params.path)}, config.server)
    try:
        with a.client() as ha, ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(upload, ha, "kb", [files / "extra-1.txt", files / "extra-2.txt"]),
                       pool.submit(other.submit_changes, "kb", files, changed=["extra-3.txt"]),
                       pool.submit(ha.delete, "/v1/collections/kb/documents/extra-0.txt")]
            mine = futures[1].result()
            jobs = [futures[0].result().json()["job"]["id"], mine.id, futures[2].result().json()["job"]["id"]]
            states = [wait_job(ha, job)["state"] for job in jobs]
            assert states == ["done"] * 3
            docs = {d["id"]: d for d in ha.get("/v1/collections/kb/documents").json()["documents"]}
            assert set(docs) == {"widget.pdf", "notes.md", "extra-1.txt", "extra-2.txt", "extra-3.txt"}
            assert _index_documents(index) == {name: d["chunks"] for name, d in docs.items()}
            before = current_version(index).name

            # another build holds the index's lock: the job moves its file in, then waits; kill the server there
            lock = FileLock(str(index / ".lock"))
            lock.acquire()
            try:
                job = upload(ha, "kb", [files / "extra-4.txt"]).json()["job"]["id"]
                wait_job(ha, job, until=("waiting for another build of this index",))
                queued = upload(ha, "kb", [files / "extra-5.txt"]).json()["job"]["id"]
                third = upload(ha, "kb", [files / "guide.html"]).json()["job"]["id"]
                assert _status(upload(ha, "kb", [files / "copy-of-notes.md"], ["fresh.md"])) == (429, "too_many_jobs")
                a.stop(signal.SIGKILL)
                assert current_version(index).name == before
                assert other.job(job).state == "running"  # as the killed server left it
                assert {d["id"]: d["state"] for d in other.documents("kb")}["extra-4.txt"] == "indexing"

                receiving = _killed_while_receiving(kb)

                a2 = kb["server"] = Server(kb["config"], kb["tmp"] / "server-a2.log", KEYS)
                with a2.client() as h2:  # resumed, still waiting: the last published version answers
                    asker = Asker(a2.base, [{"query": QUERY, "collection": "kb", "top_k": 5}])
                    asker.start()
                    wait_job(h2, job, until=("waiting for another build of this index",))
                    _until(lambda: len(asker.versions) >= 2)  # answered while the job waits
            finally:
                lock.release()
            with a2.client() as h2:
                resumed = [wait_job(h2, j) for j in (job, queued, third)]
                _until(lambda: asker.versions[-1] == current_version(index).name)
                asker.stop()
                assert [(j["state"], j["resumed"]) for j in resumed] == [("done", 1)] * 3
                docs = {d["id"]: d for d in h2.get("/v1/collections/kb/documents").json()["documents"]}
                assert {"extra-4.txt", "extra-5.txt", "guide.html"} <= set(docs)
                assert all(d["state"] == "indexed" for d in docs.values())
                assert _index_documents(index) == {name: d["chunks"] for name, d in docs.items()}
                hits = h2.post("/v1/search", json={"query": "plugin 4", "collection": "kb", "top_k": 50}).json()
                assert "extra-4.txt" in {h["source"] for h in hits["retrieved"]}
        assert set(asker.statuses) == {200}, asker.errors[:3]
        assert asker.versions[0] == before and asker.versions[-1] == current_version(index).name != before
        assert "resuming job" in a2.output() and "Traceback" not in a2.output()
        settled = other.job(receiving)
        assert (settled.state, settled.error) == ("failed", "the server stopped while the upload came in: upload again")
        assert not (kb["data"] / "kb" / "incoming" / receiving).exists()
    finally:
        other.queue.close()


def test_deleting_a_collection_removes_only_what_the_server_wrote(kb):
    server = kb["server"]
    root = kb["data"] / "kb"
    (root / "corpus" / "mine.txt").write_text("a file the server did not write")
    with server.client() as http:
        out = http.delete("/v1/collections/kb")
        assert out.status_code == 200, out.text
        assert out.json() == {"deleted": "kb", "left": ["corpus/mine.txt"]}
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["corpus", "corpus/mine.txt"]
        assert [c["name"] for c in http.get("/v1/collections").json()["collections"]] == ["tiny"]
        assert _status(http.post("/v1/ask", json={"query": "widget", "collection": "kb"})) == (404, "not_found")
        assert http.post("/v1/ask", json={"query": "vitamin D"}).status_code == 200
    assert "Traceback" not in server.output()


def test_a_watched_folder_re_ingests_a_served_collection_through_submit_changes(tmp_path, tiny_embedder_dir):
    """The API the watched folder calls: one incremental job over a config's own index, vectors reused."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\nThe widget moves files between machines.\n")
    (corpus / "b.txt").write_text("Plugins extend the widget.\n")
    config_path = write_config(tmp_path / "plain.yaml", str(tiny_embedder_dir), tmp_path / "index",
                               server={"data_dir": str(tmp_path / "data")})
    config = load_config(config_path)
    build_index(corpus, config)
    knowledge = Knowledge({"plain": config}, {"plain": tmp_path / "index"}, config.server)
    try:
        (corpus / "c.md").write_text("# C\nA new note about the widget's cache folder.\n")
        (corpus / "b.txt").unlink()
        (corpus / "a.md").write_bytes(b"\xff\xfe\x00binary")  # half-written or corrupt
        job = knowledge.submit_changes("plain", corpus, changed=["c.md", "a.md"], removed=["b.txt"])
        deadline = time.monotonic() + 60
        while not job.finished:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job.state == "done" and job.version == current_version(tmp_path / "index").name
        assert [f["file"] for f in job.failures] == ["a.md"]  # unreadable now: its indexed version stays
        assert set(_index_documents(tmp_path / "index")) == {"a.md", "c.md"}
        assert {d["id"] for d in knowledge.documents("plain")} == {"a.md", "c.md"}
        assert knowledge.job(job.id).to_dict() == job.to_dict()
    finally:
        knowledge.queue.close()


def test_a_collection_in_milvus_answers_as_in_faiss_after_uploads_and_a_deletion(tmp_path, tiny_embedder_dir):
    """The same uploads and deletion into a collection whose template config stores vectors in Milvus (Lite)."""
    pytest.importorskip("pymilvus", reason="needs the 'scale' extra")
    files = sorted((tmp_path / "files" / Path(rel).name, text) for rel, text in TINY_DOCS.items())
    for path, text in files:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    answers = {}
    for kind, index in (("faiss", None), ("milvus", {"type": "milvus", "path": str(tmp_path / "milvus-index")})):
        path = write_config(tmp_path / f"{kind}.yaml", str(tiny_embedder_dir), tmp_path / f"{kind}-index",
                            server={"data_dir": str(tmp_path / f"{kind}-data")})
        if index:  # a Milvus index section instead of FAISS's
            raw = yaml.safe_load(path.read_text())
            raw["index"] = index
            path.write_text(yaml.safe_dump(raw))
        config = load_config(path)
        assert config.index.type == kind
        knowledge = Knowledge({kind: config}, {kind: tmp_path / f"{kind}-index"}, config.server)
        try:
            knowledge.create("kb", kind)
            jobs = [knowledge.stage_upload("kb", [(p.name, open(p, "rb")) for p, _ in files])[0]]
            jobs.append(knowledge.delete_document("kb", "iron.txt"))
            deadline = time.monotonic() + 120
            while not all(job.finished for job in jobs):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert [job.state for job in jobs] == ["done", "done"]
        finally:
            knowledge.queue.close()
        pipe = Pipeline(config, tmp_path / f"{kind}-data" / "kb" / "index").load()
        hits = pipe.search("vitamin deficiency bone pain", 20, {})
        answers[kind] = sorted((h.chunk_id, round(h.retrieval_score, 4)) for h in hits)  # ties in any order
        assert "iron.txt" not in {h.doc_id for h in hits} and len(hits) == 12
    assert answers["milvus"] == answers["faiss"]
