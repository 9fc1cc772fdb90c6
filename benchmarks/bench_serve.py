"""The HTTP server under concurrent clients: throughput, p50/p95 latency, errors; micro-batching on vs off.

SciFact test queries are sent to ``POST /v1/ask`` by 1, 4 and 16 concurrent
clients (each client one query at a time, every query once per level). Unless
``--url`` names a running server, the script starts scripts/serve.py twice on a
free loopback port over the same cached index (runs/cache, built once as
bench_query.py does), once with ``server.micro_batching`` on and once off, so
both are measured in the same run on the same machine.

    python benchmarks/bench_serve.py [--queries 60] [--clients 1,4,16] [--config configs/offline.yaml]
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000   # a server you started
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import ROOT, SHARED_DATA, header


def run_level(url: str, queries: list[str], clients: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0

    def client(part: list[str]) -> tuple[list[float], int]:
        times, failed = [], 0
        with httpx.Client(base_url=url, timeout=120) as http:
            for query in part:
                start = time.perf_counter()
                try:
                    ok = http.post("/v1/ask", json={"query": query}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                times.append(time.perf_counter() - start)
                failed += not ok
        return times, failed

    parts = [queries[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for times, failed in pool.map(client, parts):
            latencies += times
            errors += failed
    wall = time.perf_counter() - start
    return {"qps": len(queries) / wall, "p50": 1000 * np.percentile(latencies, 50),
            "p95": 1000 * np.percentile(latencies, 95), "errors": errors}


def start_server(config: str, index_path, overrides: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--config", config, "--index", str(index_path),
               "--port", str(port)] + [f"--set={o}" for o in overrides]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {' '.join(command)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--url", default=None, help="bench this running server instead of starting two")
    args = parser.parse_args()
    if not (SHARED_DATA / "scifact").is_dir():
        print(f"skipped: {SHARED_DATA / 'scifact'} is absent")
        return 0
    header("HTTP server under concurrent clients, SciFact test queries, POST /v1/ask")
    from evaluation.collection import load_collection

    collection = load_collection(SHARED_DATA / "scifact", "test")
    queries = [collection.queries[q] for q in sorted(collection.queries)][: args.queries]
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    if args.url:
        modes = [("as running", None)]
    else:
        from evaluation.indexes import cached_index_path, ensure_index, index_key
        from indexer.build import corpus_hash
        from indexer.corpus import read_corpus
        from pipeline.config import load_config

        base = load_config(args.config)
        key = index_key(base, corpus_hash(read_corpus(collection.corpus_path).documents))
        index_path, _ = ensure_index(collection.corpus_path, base,
                                     cached_index_path(ROOT / "runs" / "cache", "scifact", key), key)
        modes = [("on", ["server.micro_batching=true"]), ("off", ["server.micro_batching=false"])]
    for mode, overrides in modes:
        proc, url = (None, args.url) if overrides is None else start_server(args.config, index_path, overrides)
        try:
            run_level(url, queries[:4], 2)  # warm-up
            for clients in levels:
                rows.append((mode, clients, run_level(url, queries, clients)))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    print(f"\nconfig: {args.config}; {len(queries)} queries per level, every query answered with reranking\n")
    print("| micro-batching | clients | throughput q/s | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|---|")
    for mode, clients, r in rows:
        print(f"| {mode} | {clients} | {r['qps']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
