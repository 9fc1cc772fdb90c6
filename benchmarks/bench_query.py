"""End-to-end ``ask`` latency over SciFact test queries with the offline config.

The index is SciFact's corpus chunked as configs/offline.yaml says (built once,
cached under runs/cache). Each variant answers the same queries (50 candidates
reranked to 5) after a warm-up; p50/p95 of the total and of each stage are
printed, variants interleaved query by query so machine noise hits all alike.

    python benchmarks/bench_query.py [--queries 100] [--variant NAME=KEY=VALUE,...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import ROOT, SHARED_DATA, header

DEFAULT_VARIANTS = [
    "as configured=",
    "torch exact fp32 (before issue 17)=reranker.backend=torch,reranker.quantize=none",
    "torch int8 dynamic=reranker.backend=torch,reranker.quantize=int8",
    "openvino fp32=reranker.backend=openvino,reranker.quantize=none",
    "openvino int8=reranker.backend=openvino,reranker.quantize=int8",
    "onnx fp32=reranker.backend=onnx,reranker.quantize=none",
    "onnx int8=reranker.backend=onnx,reranker.quantize=int8",
    "no reranker=reranker.enabled=false",
]
REFERENCE = "torch exact fp32 (before issue 17)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=OVERRIDES",
                        help="a name and comma-separated --set overrides (repeat)")
    args = parser.parse_args()
    if not (SHARED_DATA / "scifact").is_dir():
        print(f"skipped: {SHARED_DATA / 'scifact'} is absent")
        return 0
    header("End-to-end ask latency, SciFact test queries, offline config")
    from evaluation.collection import load_collection
    from evaluation.indexes import cached_index_path, ensure_index, index_key
    from indexer.build import corpus_hash
    from indexer.corpus import read_corpus
    from pipeline.config import load_config
    from pipeline.pipeline import Pipeline

    collection = load_collection(SHARED_DATA / "scifact", "test")
    base = load_config(args.config)
    key = index_key(base, corpus_hash(read_corpus(collection.corpus_path).documents))
    cached = cached_index_path(ROOT / "runs" / "cache", "scifact", key)
    index_path, _ = ensure_index(collection.corpus_path, base, cached, key)

    pipes = {}
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, overrides = spec.partition("=")
        pipe = Pipeline(load_config(args.config, [o for o in overrides.split(",") if o]), index_path)
        if pipes:  # share the embedder and index with the first variant: same work, less memory
            first = next(iter(pipes.values()))
            pipe.__dict__.update(embedder=first.embedder, index=first.index)
        pipes[name] = pipe.load()
    queries = [collection.queries[q] for q in sorted(collection.queries)][: args.queries]
    for pipe in pipes.values():
        for query in queries[:3]:
            pipe.ask(query)  # warm-up
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in pipes}
    for query in queries:
        for name, pipe in pipes.items():
            start = time.perf_counter()
            result = pipe.ask(query)
            timings[name].append({**result.timings, "wall": time.perf_counter() - start})

    first = next(iter(pipes.values()))
    reranker = first.config.reranker
    print(f"\nconfig: {args.config}; index: {first.index.manifest.counts['chunks']} chunks; "
          f"top_k {first.top_k}, reranker {reranker.params.model if reranker else 'disabled'}; "
          f"{len(queries)} queries\n")
    import os

    if reranker is not None:
        print(f"reranker as configured: backend {reranker.params.backend}, quantize {reranker.params.quantize}, "
              f"max_length {reranker.params.max_length}")
    print(f"load average {os.getloadavg()[0]:.1f} (another engineer's jobs share these 2 cores)\n")
    reference = [r["total"] for r in timings.get(REFERENCE, [])]
    print("| variant | total p50 ms | total p95 ms | x torch exact (p50) | embed p50 | search p50 | rerank p50 | "
          "rerank p95 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in timings.items():
        def pct(stage, q, rows=rows):
            values = [r[stage] for r in rows if stage in r]
            return f"{1000 * np.percentile(values, q):.0f}" if values else "-"
        ratio = (f"{np.percentile(reference, 50) / np.percentile([r['total'] for r in rows], 50):.2f}"
                 if reference else "-")
        print(f"| {name} | {pct('total', 50)} | {pct('total', 95)} | {ratio} | {pct('embed', 50)} | "
              f"{pct('search', 50)} | "
              f"{pct('rerank', 50)} | {pct('rerank', 95)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
