"""The server's resident memory over a long run of hostile requests: does it stay bounded?

Starts scripts/serve.py on a free loopback port (over an index of data/ built into a temporary
folder, unless ``--index`` names one) and sends a battery of hostile requests, round after round:
an absurd ``top_k``, the largest allowed ``top_k``, 1,500 documents in one rerank call, a document of
most of the body limit scored by windows, bodies over the limit, malformed and deeply nested JSON,
over-long and control-character queries, huge filters, a TEI text refused as too long, unknown
routes. After each round it reads the server's resident memory (VmRSS from /proc) and prints it
with the statuses seen, so a leak shows as a line that keeps climbing.

    python benchmarks/bench_hostile.py [--rounds 10] [--config configs/offline.yaml] [--index DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from bench_serve import start_server
from common import ROOT, header


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def battery() -> list[tuple[str, str, bytes | dict]]:
    """(name, path, body): a dict is sent as JSON, bytes as they are."""
    words = "the committee met and discussed the budget and the parking rules of the library " * 11_000
    documents = [f"document {i} on vitamin D and bones" for i in range(1500)]
    values = [f"x{i}" for i in range(5000)]
    return [
        ("top_k 1e9", "/v1/ask", {"query": "vitamin D", "top_k": 1_000_000_000}),
        ("top_k at the limit", "/v1/ask", {"query": "vitamin D", "top_k": 1000, "top_n": 5}),
        ("search top_k 1e9", "/v1/search", {"query": "vitamin D", "top_k": 1_000_000_000}),
        ("1,500 documents", "/v1/rerank", {"query": "vitamin D deficiency", "documents": documents}),
        ("a 0.9 MB document, windows", "/v1/rerank", {"query": "vitamin D", "documents": [words[:900_000]],
                                                      "max_tokens_per_doc": 20_000}),
        ("TEI long text, truncate false", "/rerank", {"query": "q", "texts": [words[:50_000]], "truncate": False}),
        ("11,000 documents", "/v1/rerank", {"query": "q", "documents": ["d"] * 11_000}),
        ("body over the limit", "/v1/ask", b'{"query": "' + b"x" * 1_200_000 + b'"}'),
        ("malformed JSON", "/v1/ask", b"{not json"),
        ("JSON nested 100,000 deep", "/v1/ask", b"[" * 100_000 + b"]" * 100_000),
        ("query of 2,001 characters", "/v1/ask", {"query": "q" * 2001}),
        ("control characters", "/v1/ask", {"query": "\x00\x01\x02 vitamin \x1b[31m D"}),
        ("filter of 5,000 values", "/v1/ask", {"query": "vitamin D", "filter": {"lang": values}}),
        ("chat without a generator", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("unknown route", "/v1/nothing", {"query": "q"}),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    parser.add_argument("--index", default=None, help="an index built with the config (default: data/ into a temp dir)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    import httpx

    header("server memory over rounds of hostile requests")
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            from indexer.build import build_index
            from pipeline.config import load_config

            index = Path(tmp) / "index"
            build_index(ROOT / "data", load_config(args.config), index)
        proc, url = start_server(args.config, index, [])
        try:
            cases = battery()
            print(f"\nconfig: {args.config}; {len(cases)} requests per round: {', '.join(n for n, _, _ in cases)}\n")
            print("| round | RSS MB | seconds | statuses |")
            print("|---|---|---|---|")
            print(f"| ready | {rss_mb(proc.pid):.0f} | | |")
            with httpx.Client(base_url=url, timeout=300) as http:
                for round_ in range(1, args.rounds + 1):
                    statuses: collections.Counter[int] = collections.Counter()
                    start = time.perf_counter()
                    for _, path, body in cases:
                        if isinstance(body, bytes):
                            response = http.post(path, content=body, headers={"content-type": "application/json"})
                        else:
                            response = http.post(path, content=json.dumps(body),
                                                 headers={"content-type": "application/json"})
                        statuses[response.status_code] += 1
                        assert "Traceback" not in response.text, response.text[:500]
                    seconds = time.perf_counter() - start
                    seen = " ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))
                    print(f"| {round_} | {rss_mb(proc.pid):.0f} | {seconds:.1f} | {seen} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
