"""The HTTP API (server/): in-process with FastAPI's TestClient, and as a real uvicorn process on a loopback port.

One tiny index is built per module; the real process is started once (with the
official cohere SDK as its client, concurrent requests, SIGTERM at the end).
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

import numpy as np
import pytest
import yaml

pytest.importorskip("fastapi", reason="needs the 'serve' extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from indexer.build import build_index  # noqa: E402
from pipeline.config import ServerParams, load_config  # noqa: E402
from pipeline.pipeline import Pipeline  # noqa: E402
from pipeline.protocols import Scorer  # noqa: E402
from pipeline.render import result_to_dict  # noqa: E402
from pipeline.types import DEFAULT_SCORE_OPTIONS  # noqa: E402
from server import create_app  # noqa: E402
from server.batching import MicroBatcher, QueueFullError  # noqa: E402
from tests.conftest import ROOT, TINY_DOCS, wait_until_ready, write_config  # noqa: E402

QUERY = "bone pain from low vitamin D"


def _corpus(root, docs):
    for rel, text in docs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_embedder_dir, tiny_reranker_dir):
    """Two configs over one tiny index: ``tiny`` (with the reranker) and ``plain`` (without)."""
    tmp = tmp_path_factory.mktemp("server")
    corpus = _corpus(tmp / "corpus", TINY_DOCS)
    index = tmp / "index"
    tiny = write_config(tmp / "tiny.yaml", str(tiny_embedder_dir), index, str(tiny_reranker_dir),
                        server={"max_body_bytes": 20_000, "max_documents": 50, "max_query_chars": 300})
    plain = write_config(tmp / "plain.yaml", str(tiny_embedder_dir), index)
    build_index(corpus, load_config(tiny))
    return {"tmp": tmp, "corpus": corpus, "index": index, "tiny": tiny, "plain": plain}


def _wait_ready(client, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(setup):
    app = create_app({"tiny": load_config(setup["tiny"]), "plain": load_config(setup["plain"])})
    with TestClient(app) as test_client:
        _wait_ready(test_client)
        yield test_client


def test_ask_is_ask_py_json_plus_config_and_version(client, setup):
    response = client.post("/v1/ask", json={"query": QUERY, "top_k": 6, "top_n": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = result_to_dict(Pipeline(load_config(setup["tiny"])).ask(QUERY, 6, 3))
    assert set(body) == {*expected, "config", "index_version"}
    assert body["config"] == "tiny" and body["index_version"].startswith("v-")
    for key in ("query", "retrieved", "reranked"):
        assert _rounded(body[key]) == _rounded(expected[key]), key
    hit = body["reranked"][0]
    assert set(hit) >= {"chunk_id", "doc_id", "text", "source", "position", "score", "rank", "retrieval_score",
                        "retrieval_rank", "title", "rank_change"}
    assert {"embed", "search", "retrieve", "rerank", "total"} <= set(body["timings_ms"])


def _rounded(hits):
    if hits is None or isinstance(hits, str):
        return hits
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in hits]


def test_configs_reranker_switch_weight_and_shared_stages(client):
    listing = client.get("/v1/configs").json()
    assert listing["default"] == "tiny"
    by_name = {c["name"]: c for c in listing["configs"]}
    assert by_name["tiny"]["reranker"] is True and by_name["tiny"]["top_n"] == 3 and by_name["tiny"]["weight"] == 1.0
    assert by_name["plain"]["reranker"] is False and by_name["plain"]["top_k"] == 10
    plain = client.post("/v1/ask", json={"query": QUERY, "config": "plain"}).json()
    assert plain["reranked"] is None and plain["config"] == "plain"
    off = client.post("/v1/ask", json={"query": QUERY, "reranker": False}).json()
    assert off["reranked"] is None and off["retrieved"] == plain["retrieved"]
    mixed = client.post("/v1/ask", json={"query": QUERY, "weight": 0.0, "top_n": 10}).json()
    assert [h["chunk_id"] for h in mixed["reranked"]] == [h["chunk_id"] for h in mixed["retrieved"]]
    pipelines = client.app.state.pipelines
    assert pipelines.stage_count("embedder") == 1  # both configs share one loaded embedder
    assert pipelines.served["tiny"].pipeline.index is pipelines.served["plain"].pipeline.index


def test_search_is_the_first_stage(client):
    body = client.post("/v1/search", json={"query": QUERY, "top_k": 4}).json()
    ask = client.post("/v1/ask", json={"query": QUERY, "top_k": 4, "top_n": 2}).json()
    assert body["retrieved"] == ask["retrieved"] and body["index_version"] == ask["index_version"]


def test_rerank_cohere_and_tei_shapes(client):
    docs = ["Vitamin D deficiency causes bone pain.", "Python is a programming language.", "The Great Wall."]
    scorer = client.app.state.pipelines.served["tiny"].pipeline.reranker.reranker  # the stage behind the queue
    expected = scorer.score("vitamin D", docs)
    order = list(np.argsort(-expected, kind="stable"))
    body = client.post("/v1/rerank", json={"query": "vitamin D", "documents": [docs[0], {"text": docs[1]}, docs[2]],
                                           "top_n": 2, "return_documents": True, "model": "rerank-v3.5"}).json()
    assert [r["index"] for r in body["results"]] == order[:2]
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], expected[order[:2]], atol=1e-5)
    assert body["results"][0]["document"] == {"text": docs[order[0]]} and body["id"] and body["meta"]
    tei = client.post("/rerank", json={"query": "vitamin D", "texts": docs, "return_text": True}).json()
    assert [r["index"] for r in tei] == order and tei[0]["text"] == docs[order[0]]
    assert all(0.0 <= r["score"] <= 1.0 for r in tei)
    assert "document" not in client.post("/v2/rerank", json={"query": "q", "documents": docs}).json()["results"][0]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/ask", {"query": ""}, 422),
        ("/v1/ask", {"query": "   \n "}, 422),
        ("/v1/ask", {}, 422),
        ("/v1/ask", {"query": 5}, 422),
        ("/v1/ask", {"query": "q", "top_k": "5"}, 422),
        ("/v1/ask", {"query": "q", "top_k": 0}, 422),
        ("/v1/ask", {"query": "q", "top_k": 2, "top_n": 3}, 422),
        ("/v1/ask", {"query": "q", "weight": 1.5}, 422),
        ("/v1/ask", {"query": "q", "reranker": "yes"}, 422),
        ("/v1/ask", {"query": "q", "unknown": 1}, 422),
        ("/v1/ask", {"query": "q", "config": "nope"}, 422),
        ("/v1/ask", {"query": "q" * 301}, 422),
        ("/v1/ask", {"query": "q", "filter": {"source": "no-such-file.md"}}, 422),  # matches nothing
        ("/v1/ask", ["q"], 422),
        ("/v1/search", {"query": "q", "filter": [{"a": 1}]}, 422),
        ("/v1/rerank", {"query": "q", "documents": []}, 422),
        ("/v1/rerank", {"query": "q", "documents": [1, 2]}, 422),
        ("/v1/rerank", {"query": "q", "documents": ["d"] * 51}, 413),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": -1}, 422),
        ("/rerank", {"query": "q"}, 422),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "max_tokens_per_doc": 0}, 422),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "max_tokens_per_doc": "5"}, 422),
        ("/rerank", {"query": "q", "texts": ["d"], "truncate": "yes"}, 422),
        ("/rerank", {"query": "q", "texts": ["d"], "raw_scores": 1}, 422),
        ("/v1/search", {"query": "q", "top_k": 1001}, 422),
        ("/v1/search", {"query": "q", "explain": 1}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "max_tokens": -1}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "top_k": 10**9}, 422),
        ("/v1/ask", {"query": "q" * 30_000}, 413),
    ],
)
def test_bad_input_is_a_json_error(client, path, body, status):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error", "message"} and data["message"]
    assert "Traceback" not in response.text


def test_malformed_json_filter_message_and_unknown_route(client):
    response = client.post("/v1/ask", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    response = client.post("/v1/ask", json={"query": "q", "filter": {"year": 2020}})
    assert response.status_code == 422 and "no chunk matches the filter year=2020" in response.json()["message"]
    assert client.post("/v1/ask", json={"query": "q", "filter": {}}).status_code == 200  # empty: accepted
    assert client.get("/v1/nothing").status_code == 404 and client.get("/v1/nothing").json()["error"] == "not_found"
    assert client.get("/v1/ask").status_code == 405


def test_health_metrics_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/ask", json={"query": QUERY})
    text = client.get("/metrics").text
    assert 'rag_requests_total{endpoint="/v1/ask",method="POST",status="200"}' in text
    assert 'rag_request_seconds_bucket{endpoint="/v1/ask"' in text
    assert 'rag_stage_seconds_count{stage="rerank"}' in text and 'rag_stage_seconds_count{stage="embed"}' in text
    assert client.get("/docs").status_code == 200 and "/v1/rerank" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "html" in page.headers["content-type"]


def test_api_key_and_not_ready(setup, monkeypatch):
    monkeypatch.setenv("RAG_API_KEY", "s3cret")
    app = create_app({"tiny": load_config(setup["tiny"])}, load=False)
    with TestClient(app) as test_client:
        assert test_client.post("/v1/ask", json={"query": "q"}).status_code == 401
        wrong = test_client.post("/v1/ask", json={"query": "q"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        auth = {"Authorization": "Bearer s3cret"}
        assert test_client.get("/v1/models").status_code == 401
        assert test_client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"  # before loading too
        not_ready = test_client.post("/v1/ask", json={"query": "q"}, headers=auth)
        assert not_ready.status_code == 503 and not_ready.headers["retry-after"]
        assert test_client.get("/readyz").status_code == 503 and test_client.get("/healthz").status_code == 200
        app.state.pipelines.load()
        assert test_client.post("/v1/ask", json={"query": QUERY}, headers=auth).status_code == 200


class _SlowScorer(Scorer):
    """Records the requests of each batch; sleeps to let requests pile up."""

    def __init__(self, delay=0.05):
        self.delay = delay
        self.batches = []

    def score_many(self, requests, options=DEFAULT_SCORE_OPTIONS):
        self.batches.append(len(requests))
        time.sleep(self.delay)
        return [np.full(len(p), 0.5, dtype=np.float32) for _, p in requests]

    def score(self, query, passages):
        return self.score_many([(query, passages)])[0]


def test_micro_batching_shares_batches_and_bounds_the_queue():
    scorer = _SlowScorer()
    batcher = MicroBatcher(scorer, wait_ms=20, max_pairs=100, max_queue=100)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: batcher.score(f"q{i}", ["a", "b"]), range(8)))
    assert all(len(r) == 2 for r in results) and len(scorer.batches) < 8 and max(scorer.batches) > 1
    off = _SlowScorer(delay=0.0)
    unbatched = MicroBatcher(off, enabled=False)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: unbatched.score("q", ["a"]), range(4)))
    assert off.batches == [1, 1, 1, 1]
    full = MicroBatcher(_SlowScorer(delay=0.3), wait_ms=0, max_queue=1)
    outcomes = []

    def call():
        try:
            outcomes.append(full.score("q", ["a"]))
        except QueueFullError:
            outcomes.append("full")

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert "full" in outcomes and any(not isinstance(o, str) for o in outcomes)
    batcher.close()
    full.close()


def test_queue_full_is_503_with_retry_after(setup, monkeypatch):
    app = create_app({"tiny": load_config(setup["tiny"])}, load=False)
    app.state.pipelines.load()
    with TestClient(app) as test_client:
        batcher = app.state.pipelines.batchers[0]
        monkeypatch.setattr(batcher, "score_many",
                            lambda requests, options=None: (_ for _ in ()).throw(QueueFullError("queue is full")))
        response = test_client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert test_client.post("/v1/ask", json={"query": QUERY}).status_code == 503


def test_hot_swap_while_answering(client, setup):
    """A rebuild swaps CURRENT while a client asks in a loop: every answer is one version's, both are seen."""
    added = {"new/sunlight.md": "# Sunlight\nSunlight on skin makes vitamin D; ten minutes a day is often enough."}
    before = set(TINY_DOCS)
    after = before | set(added)
    old_version = client.post("/v1/ask", json={"query": QUERY}).json()["index_version"]
    answers, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            answers.append(client.post("/v1/ask", json={"query": QUERY, "top_k": 200, "top_n": 1}).json())

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(0.2)
        _corpus(setup["corpus"], added)
        build_index(setup["corpus"], load_config(setup["tiny"]))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(a.get("index_version") != old_version for a in answers[-3:]):
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    versions = {a["index_version"] for a in answers}
    assert len(versions) == 2 and old_version in versions, versions
    for answer in answers:
        sources = {h["source"] for h in answer["retrieved"]}
        assert sources == (before if answer["index_version"] == old_version else after), answer["index_version"]
    # the answers of the other config moved too, sharing the models
    assert client.post("/v1/ask", json={"query": QUERY, "config": "plain"}).json()["index_version"] != old_version
    assert client.app.state.pipelines.stage_count("embedder") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_with_the_cohere_sdk_concurrency_and_sigterm(setup):
    cohere = pytest.importorskip("cohere")
    port = _free_port()
    env = {**os.environ, "RAG_API_KEY": "k", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--config", f"tiny={setup['tiny']}",
         "--config", str(setup["plain"]), "--port", str(port), "--set", "server.batch_wait_ms=300"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer k"}
    try:
        wait_until_ready(proc, base, 60, 0.1)
        docs = ["Vitamin D deficiency causes bone pain.", "Python is a language.", "Iron deficiency anemia."]
        v1 = cohere.Client(api_key="k", base_url=base).rerank(query="vitamin D", documents=docs, top_n=2,
                                                              return_documents=True)
        v2 = cohere.ClientV2(api_key="k", base_url=base).rerank(model="tiny", query="vitamin D", documents=docs)
        assert [r.index for r in v1.results] == [r.index for r in v2.results][:2]
        assert v1.results[0].relevance_score >= v1.results[1].relevance_score and v1.results[0].document.text
        # the SDK's max_tokens_per_doc reaches the server: a long document is read only that far
        client = cohere.ClientV2(api_key="k", base_url=base)
        whole = client.rerank(model="tiny", query="weather", documents=[LONG_DOC])
        head = client.rerank(model="tiny", query="weather", documents=[LONG_DOC], max_tokens_per_doc=20)
        cut = client.rerank(model="tiny", query="weather", documents=[LONG_DOC[:200]], max_tokens_per_doc=20)
        assert head.results[0].relevance_score == pytest.approx(cut.results[0].relevance_score, abs=1e-6)
        assert whole.results[0].relevance_score != pytest.approx(head.results[0].relevance_score, abs=1e-7)
        with pytest.raises(cohere.core.ApiError) as info:
            cohere.ClientV2(api_key="wrong", base_url=base).rerank(model="x", query="q", documents=docs)
        assert info.value.status_code == 401
        with httpx.Client(base_url=base, headers=auth, timeout=30) as http, ThreadPoolExecutor(8) as pool:
            bodies = [{"query": f"{QUERY} {i}", "config": ["tiny", "plain"][i % 2]} for i in range(16)]
            answers = list(pool.map(lambda b: http.post("/v1/ask", json=b), bodies))
            assert [a.status_code for a in answers] == [200] * 16
            assert {a.json()["config"] for a in answers} == {"tiny", "plain"}
            metrics = http.get("/metrics").text
            batched = [line for line in metrics.splitlines() if line.startswith("rag_rerank_batch_requests_sum")]
            count = [line for line in metrics.splitlines() if line.startswith("rag_rerank_batch_requests_count")]
            assert float(batched[0].split()[-1]) > float(count[0].split()[-1])  # some batch held several requests
            # SIGTERM while a request waits in the rerank queue (300 ms): it still gets its answer
            in_flight = pool.submit(http.post, "/v1/rerank", json={"query": "q", "documents": docs})
            time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert in_flight.result().status_code == 200
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "Traceback" not in output, output


def test_server_over_a_milvus_lite_index(tmp_path, tiny_corpus, tiny_embedder_dir, tiny_reranker_dir):
    pytest.importorskip("pymilvus", reason="needs the 'scale' extra")
    pytest.importorskip("milvus_lite", reason="Milvus Lite has no wheel for this platform")
    path = write_config(tmp_path / "m.yaml", str(tiny_embedder_dir), tmp_path / "index", str(tiny_reranker_dir))
    raw = yaml.safe_load(path.read_text())
    raw["index"] = {"type": "milvus", "path": str(tmp_path / "index")}
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    build_index(tiny_corpus, config)
    with TestClient(create_app({"milvus": config})) as test_client:
        _wait_ready(test_client)
        body = test_client.post("/v1/ask", json={"query": QUERY, "top_k": 5}).json()
        assert len(body["retrieved"]) == 5 and len(body["reranked"]) == 3 and body["config"] == "milvus"
        expected = Pipeline(config).retriever.search([QUERY], 5)[0]
        assert [h["chunk_id"] for h in body["retrieved"]] == [h.chunk_id for h in expected]


def test_server_section_is_validated(tmp_path, tiny_embedder_dir):
    from pipeline.errors import ConfigError

    path = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "i", server={"port": 70000})
    with pytest.raises(ConfigError, match="server.port"):
        load_config(path)
    default = load_config(write_config(tmp_path / "d.yaml", str(tiny_embedder_dir), tmp_path / "i"))
    assert default.server == ServerParams()


def test_rerank_of_text_the_model_cannot_read_is_zero_not_nan(setup, tiny_embedder_dir, tiny_reranker_dir):
    config = write_config(setup["tmp"] / "en-only.yaml", str(tiny_embedder_dir), setup["index"],
                          str(tiny_reranker_dir), reranker={"languages": ["en"]})
    with TestClient(create_app({"en": load_config(config)})) as test_client:
        _wait_ready(test_client)
        documents = ["维生素D缺乏有什么症状", "vitamin D"]
        r = test_client.post("/v1/rerank", json={"query": "vitamin D", "documents": documents})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == [1, 0] and results[1]["relevance_score"] == 0.0


def test_ask_reports_the_language_guard_note(setup, tiny_embedder_dir, tiny_reranker_dir):
    """The guard's note reaches HTTP callers: the batching queue is a Scorer and forwards skip_note."""
    config = write_config(setup["tmp"] / "en-notes.yaml", str(tiny_embedder_dir), setup["index"],
                          str(tiny_reranker_dir), reranker={"languages": ["en"]})
    with TestClient(create_app({"en": load_config(config)})) as test_client:
        _wait_ready(test_client)
        body = test_client.post("/v1/ask", json={"query": "维生素D缺乏有什么症状", "top_k": 4, "top_n": 2}).json()
        assert len(body["notes"]) == 1, body
        assert body["notes"][0].startswith("reranker skipped 4 of 4 candidates: query zh not supported by")
        english = test_client.post("/v1/ask", json={"query": QUERY, "top_k": 4, "top_n": 2}).json()
        assert english["notes"] == [] and english["reranked"]


def test_configs_differing_in_mix_share_the_model_but_rank_with_their_own(setup, tiny_embedder_dir,
                                                                          tiny_reranker_dir):
    """Two configs that differ only in reranker.mix share one batching queue; each ranks with its own mix."""
    configs = {}
    for mix in ("score", "minmax"):
        path = write_config(setup["tmp"] / f"mix-{mix}.yaml", str(tiny_embedder_dir), setup["index"],
                            str(tiny_reranker_dir), reranker={"mix": mix, "weight": 0.5})
        configs[mix] = load_config(path)
    with TestClient(create_app(configs)) as test_client:
        _wait_ready(test_client)
        assert len(test_client.app.state.pipelines.batchers) == 1  # one model, one queue
        for mix, config in configs.items():
            body = test_client.post("/v1/ask", json={"query": QUERY, "top_k": 6, "top_n": 6, "config": mix}).json()
            alone = Pipeline(config).ask(QUERY, 6, 6)
            assert [round(h["score"], 5) for h in body["reranked"]] == [round(h.score, 5) for h in alone.reranked]


# -- client semantics: OpenAI models, bounded top_k, long documents, TEI options, long lists ------

LONG_DOC = " ".join([f"Paragraph {i} talks about the weather in town number {i} and nothing else." for i in range(50)]
                    + ["Vitamin D deficiency causes bone pain and weak muscles."] * 8)  # a different end
RERANKER_MODEL = ROOT / "models" / "minilm-reranker"


def _stage(client, name="tiny"):
    """The loaded reranker stage behind a served config's batching queue."""
    return client.app.state.pipelines.served[name].pipeline.reranker.reranker


def test_models_list_with_the_openai_sdk(client):
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny", "plain"] and all(m.object == "model" for m in models.data)
    assert sdk.models.retrieve("plain").id == "plain"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/search"])
def test_top_k_is_bounded(client, path):
    response = client.post(path, json={"query": QUERY, "top_k": 1_000_000_000})
    assert response.status_code == 422, response.text
    assert response.json()["message"] == "top_k is 1000000000; the limit is 1000 (server.max_top_k)"
    assert client.post(path, json={"query": QUERY, "top_k": 1000}).status_code == 200


def test_cohere_long_documents_are_scored_by_their_best_window(client):
    from pipeline.types import ScoreOptions

    stage = _stage(client)
    query = "weather in town number 59"
    windows, owners = stage._pieces(query, [LONG_DOC], ScoreOptions(long="windows"))
    assert len(windows) > 3 and set(owners) == {0} and windows[-1].endswith(LONG_DOC[-30:])
    best = float(np.max(stage.score(query, windows)))
    body = client.post("/v1/rerank", json={"query": query, "documents": [LONG_DOC, "Paragraph"]}).json()
    by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert by_index[0] == pytest.approx(best, abs=1e-5)
    # max_tokens_per_doc: only the first 20 tokens are read (one window: the model's whole view)
    tokens = stage._tokenizer(LONG_DOC, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    head = LONG_DOC[: tokens[19][1]]
    cut = client.post("/v2/rerank", json={"query": query, "documents": [LONG_DOC], "max_tokens_per_doc": 20}).json()
    assert cut["results"][0]["relevance_score"] == pytest.approx(float(stage.score(query, [head])[0]), abs=1e-5)


def test_tei_truncate_direction_raw_scores_and_return_text(client):
    stage = _stage(client)
    query = "weather"
    texts = ["short text about the weather", LONG_DOC]
    raw = client.post("/rerank", json={"query": query, "texts": texts[:1], "raw_scores": True}).json()
    assert raw[0]["score"] == pytest.approx(float(stage.logits(query, texts[:1])[0]), abs=1e-4)
    refused = client.post("/rerank", json={"query": query, "texts": texts, "truncate": False})
    assert refused.status_code == 413 and "passage 1 is" in refused.json()["message"]
    left = client.post("/rerank", json={"query": query, "texts": texts, "truncate": True,
                                        "truncation_direction": "Left", "return_text": True}).json()
    right = client.post("/rerank", json={"query": query, "texts": texts, "truncate": True}).json()
    assert {r["index"]: r["text"] for r in left} == dict(enumerate(texts))
    tail_score = {r["index"]: r["score"] for r in left}[1]
    head_score = {r["index"]: r["score"] for r in right}[1]
    assert head_score == pytest.approx(float(stage.score(query, [LONG_DOC])[0]), abs=1e-5)  # the end cut
    assert tail_score != pytest.approx(head_score, abs=1e-6)  # another part of the text was read
    bad = client.post("/rerank", json={"query": query, "texts": texts, "truncation_direction": "Up"})
    assert bad.status_code == 422


def test_a_long_candidate_list_is_served_in_batches_up_to_the_hard_limit(setup, tiny_embedder_dir,
                                                                         tiny_reranker_dir):
    path = write_config(setup["tmp"] / "many.yaml", str(tiny_embedder_dir), setup["index"], str(tiny_reranker_dir),
                        server={"max_documents": 2000, "max_batch_pairs": 256})
    with TestClient(create_app({"many": load_config(path)})) as test_client:
        _wait_ready(test_client)
        batcher = test_client.app.state.pipelines.batchers[0]
        sizes = []
        batcher.on_batch = lambda requests, pairs, seconds: sizes.append(pairs)
        documents = [f"document {i} about vitamin D and bones" for i in range(1500)]
        response = test_client.post("/v1/rerank", json={"query": "vitamin D", "documents": documents})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert sorted(r["index"] for r in results) == list(range(1500))
        assert max(sizes) <= 256 and sum(sizes) == 1500  # six batches, none over the cap
        expected = batcher.reranker.score("vitamin D", documents)
        got = np.array([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        over = test_client.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 2001})
        assert over.status_code == 413 and "server.max_documents" in over.json()["message"]


@pytest.mark.slow
@pytest.mark.skipif(not RERANKER_MODEL.is_dir(), reason="models/minilm-reranker is not here")
def test_a_long_document_with_the_answer_at_its_end_ranks_first(setup, tiny_embedder_dir):
    """A ~3,000-token document whose last paragraph answers the query beats documents that only share words."""
    filler = " ".join(f"Section {i}: the committee met and discussed the budget, the parking rules and the "
                      f"schedule of the library for the coming months." for i in range(120))
    answer = ("Vitamin D deficiency causes bone pain, muscle weakness, and in children rickets, "
              "because the body cannot absorb calcium without it.")
    documents = ["Vitamin D is a word that appears in many places.", filler + " " + answer,
                 "Deficiency symptoms of iron include fatigue."]
    path = write_config(setup["tmp"] / "minilm.yaml", str(tiny_embedder_dir), setup["index"], str(RERANKER_MODEL),
                        reranker={"max_length": 256})
    with TestClient(create_app({"minilm": load_config(path)})) as test_client:
        _wait_ready(test_client)
        stage = _stage(test_client, "minilm")
        assert len(stage._tokenizer(documents[1], add_special_tokens=False)["input_ids"]) > 3000
        body = test_client.post("/v1/rerank", json={"query": "symptoms of vitamin D deficiency",
                                                    "documents": documents, "max_tokens_per_doc": 8192}).json()
        assert body["results"][0]["index"] == 1, body
        # cut to its first tokens, as before windows, the model never sees the answer
        cut = test_client.post("/rerank", json={"query": "symptoms of vitamin D deficiency", "texts": documents,
                                                "truncate": True}).json()
        best, first = body["results"][0]["relevance_score"], {r["index"]: r["score"] for r in cut}[1]
        assert best > first + 0.05, (best, first)


E5_RERANKER = ROOT / "models" / "e5-reranker"
SEED_CASES = [  # (query, the answer, a related passage that does not answer, plainly unrelated ones)
    ("Artificial Intelligence applications in healthcare",
     "AI is transforming medical diagnosis and treatment planning.",
     "The history of artificial intelligence began with symbolic reasoning programs in the 1950s.",
     ["The stock market closed higher today.", "I like to play football on weekends."]),
    ("What is the capital of France?", "Paris is the capital and largest city of France.",
     "Berlin is the capital of Germany.", ["The weather is nice today.", "Bananas are rich in potassium."]),
    ("什么是人工智能？", "人工智能是计算机科学的一个分支，致力于让机器模拟人类的智能。",
     "深度学习需要大量的数据和计算资源。", ["今天天气很好，适合出去散步。", "这家餐厅的饺子很好吃。"]),
]


@pytest.mark.slow
@pytest.mark.skipif(not E5_RERANKER.is_dir(), reason="models/e5-reranker is not here")
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_the_offline_reranker_scores_can_be_thresholded_through_rerank(setup, tiny_embedder_dir, backend):
    """The shipped offline reranker through /v1/rerank, as Cohere-style clients call it: in English and
    Chinese the answer comes first and scores >= 0.5 (calibrated), plainly unrelated text below the
    related passage, and in English at most 0.3 (Chinese unrelated text scores up to ~0.32). Scored by
    torch int8 and by what the offline configs' ``backend: auto`` runs on this CPU (OpenVINO int8 with VNNI)."""
    from pipeline.rerankers import backends

    if backend == "auto" and backends.auto_backend("int8", "cpu")[0] == "torch":
        pytest.skip("backend auto is torch int8 on this CPU: the torch case is the same scoring")
    path = write_config(setup["tmp"] / f"e5-{backend}.yaml", str(tiny_embedder_dir), setup["index"], str(E5_RERANKER),
                        reranker={"max_length": 160, "backend": backend, "quantize": "int8",
                                  "quantize_skip": [r"\.output\.dense"]})
    with TestClient(create_app({"e5": load_config(path)})) as test_client:
        # auto on a fresh clone: the server's loading makes the one-time OpenVINO export (98-160 s on 2 cores)
        _wait_ready(test_client, timeout=60.0 if backend == "torch" else 600.0)
        for query, answer, related, unrelated in SEED_CASES:
            documents = [*unrelated, related, answer]
            body = test_client.post("/v1/rerank", json={"query": query, "documents": documents}).json()
            order = [r["index"] for r in body["results"]]
            score = {r["index"]: r["relevance_score"] for r in body["results"]}
            assert order[0] == len(documents) - 1, (query, body)
            assert score[len(documents) - 1] >= 0.5, (query, score)
            assert all(score[i] < score[len(unrelated)] for i in range(len(unrelated))), (query, score)
            if query.isascii():
                assert all(score[i] <= 0.3 for i in range(len(unrelated))), (query, score)


def test_one_table_maps_the_project_errors_to_statuses():
    from pipeline.errors import ConfigError, GeneratorError, InputError, PassageTooLongError, RagError, StageError
    from server.errors import status_of
    from server.pipelines import NotReadyError

    cases = {PassageTooLongError("x"): 413, InputError("x"): 422, ConfigError("x"): 422,
             QueueFullError("x"): 503, NotReadyError("x"): 503, GeneratorError("x"): 502, RagError("x"): 500,
             StageError("reranker", "cross-encoder", ValueError("x")): 500}
    assert {type(e).__name__: status_of(e)[0] for e in cases} == {type(e).__name__: s for e, s in cases.items()}
    assert status_of(QueueFullError("x"))[2] == {"Retry-After": "1"}


def test_server_timing_header_names_each_stage(client):
    import re

    response = client.post("/v1/ask", json={"query": "timing of " + QUERY, "top_k": 6, "top_n": 3})
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    body = response.json()
    assert set(timing) == set(body["timings_ms"]) >= {"embed", "search", "retrieve", "rerank", "total"}
    for stage, ms in body["timings_ms"].items():
        assert float(timing[stage]) == pytest.approx(ms, abs=0.051)
    assert "search;dur=" in client.post("/v1/search", json={"query": "timing"}).headers["server-timing"]
    rerank = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert re.fullmatch(r"rerank;dur=[\d.]+", rerank.headers["server-timing"])
    assert "rerank;dur=" in client.post("/rerank", json={"query": "q", "texts": ["a"]}).headers["server-timing"]


def test_repeated_requests_are_answered_from_the_cache_until_the_index_moves(tmp_path, tiny_embedder_dir,
                                                                             tiny_reranker_dir):
    corpus = _corpus(tmp_path / "corpus", TINY_DOCS)
    config = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index", str(tiny_reranker_dir))
    build_index(corpus, load_config(config))
    with TestClient(create_app({"tiny": load_config(config)})) as test_client:
        _wait_ready(test_client)
        body = {"query": QUERY, "top_k": 6, "top_n": 3}
        first = test_client.post("/v1/ask", json=body)
        again = test_client.post("/v1/ask", json=body)
        assert "cache" not in first.headers["server-timing"] and again.headers["server-timing"].startswith("cache")
        assert again.json() == first.json()
        other = test_client.post("/v1/ask", json={**body, "top_n": 2})  # another body: computed
        assert "cache" not in other.headers["server-timing"] and len(other.json()["reranked"]) == 2
        search = [test_client.post("/v1/search", json={"query": QUERY}) for _ in range(2)]
        assert search[1].headers["server-timing"].startswith("cache") and search[0].json() == search[1].json()
        metrics = test_client.get("/metrics").text
        assert 'rag_cache_lookups_total{result="hit"} 2.0' in metrics
        assert 'rag_cache_lookups_total{result="miss"} 3.0' in metrics
        _corpus(corpus, {"new/sunlight.md": "# Sunlight\nSunlight on skin makes vitamin D."})
        build_index(corpus, load_config(config))
        moved = test_client.post("/v1/ask", json=body)
        assert "cache" not in moved.headers["server-timing"]
        assert moved.json()["index_version"] != first.json()["index_version"]
        assert len(test_client.app.state.service.cache) == 1  # the swap freed the old version's answers
    off = write_config(tmp_path / "off.yaml", str(tiny_embedder_dir), tmp_path / "index", str(tiny_reranker_dir),
                       server={"cache_size": 0})
    with TestClient(create_app({"tiny": load_config(off)})) as test_client:
        _wait_ready(test_client)
        answers = [test_client.post("/v1/ask", json={"query": QUERY}) for _ in range(2)]
        assert all("cache" not in a.headers["server-timing"] for a in answers)


def test_the_response_cache_is_bounded_in_entries_and_bytes():
    from server.cache import ResponseCache

    cache = ResponseCache(size=3, max_bytes=4000)
    for i in range(5):
        cache.put(f"k{i}", {"i": i})
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4") == {"i": 4}
    cache.put("big", {"text": "x" * 1500})  # over a quarter of max_bytes: not kept
    assert cache.get("big") is None
    for i in range(10):
        cache.put(f"m{i}", {"text": "y" * 900})  # about 920 bytes each: four fit in 4000
    assert cache.bytes <= 4000 and len(cache) <= 3 and cache.get("m9") is not None
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    off = ResponseCache(size=0, max_bytes=4000)
    off.put("k", {"a": 1})
    assert off.get("k") is None


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    class Picky(_SlowScorer):
        attempts: list[int] = []

        def score_many(self, requests, options=DEFAULT_SCORE_OPTIONS):
            self.attempts.append(len(requests))
            if any("bad" in p for _, ps in requests for p in ps):
                raise ValueError("passage 0 is too long")
            return super().score_many(requests, options)

    scorer = Picky(delay=0.05)
    batcher = MicroBatcher(scorer, wait_ms=100, max_pairs=100)

    def call(passages):
        try:
            return batcher.score("q", passages)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(call, [["a"], ["bad"], ["b", "c"]]))
    batcher.close()
    assert max(scorer.attempts) > 1  # they were batched together at first, then scored alone
    assert outcomes[1] == "passage 0 is too long"
    assert [len(o) for o in (outcomes[0], outcomes[2])] == [1, 2]
