"""Vector stores and the Ray engine, side by side in one run.

1. ``store``: FAISS against Milvus Lite on the same synthetic clustered 384-d
   vectors (100k by default), through the project's own index stages: insert
   (build + write) rate; then, in a fresh reader process (not the inserting
   one): opening time, single-query search QPS (as ``ask`` searches), recall@50
   against exact search, and the reader's memory growth per vector; plus bytes
   per vector on disk.
2. ``ray``: ``build_index --engine ray`` against the single-process build on the
   same SciFact documents (offline config, bundled all-MiniLM-L6-v2), fresh
   index each, no reuse: wall time of each and the ratio.

    python benchmarks/bench_store.py                        # both, 100k vectors, 500 documents
    python benchmarks/bench_store.py --part store --n 20000 # quicker
    python benchmarks/bench_store.py --part ray --set ray.cpus_per_actor=2  # one 2-thread actor
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_ann import synthetic
from common import ROOT, SHARED_DATA, header

DIM = 384
K = 50


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


SETTINGS = {
    "faiss Flat": ("faiss", {"factory": "Flat", "device": "cpu"}),
    "faiss HNSW32": ("faiss", {"factory": "HNSW32", "device": "cpu", "ef_search": 128}),
    "milvus-lite FLAT": ("milvus", {"index_type": "FLAT"}),
    "milvus-lite HNSW": ("milvus", {"index_type": "HNSW", "m": 32, "ef_construction": 80, "ef_search": 128}),
    "milvus-lite IVF_FLAT": ("milvus", {"index_type": "IVF_FLAT", "nlist": 1024, "nprobe": 32}),
}


def stage(name: str):
    from pipeline.registry import lookup

    kind, params = SETTINGS[name]
    cls = lookup("index", kind)
    return cls(cls.Params(**params))


def store_rows(n: int, n_queries: int, types: list[str], work: Path) -> list[dict]:
    base = synthetic(n, DIM, seed=0)
    queries = synthetic(n_queries, DIM, seed=1)
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", np.argsort(-(queries @ base.T), axis=1)[:, :K])
    rows = []
    for name in types:
        version = work / name.replace(" ", "-")
        version.mkdir(parents=True)
        start = time.perf_counter()
        writer = stage(name)
        writer.build(base)
        writer.save(version)
        insert_s = time.perf_counter() - start
        del writer
        # search in a fresh process, as a reader would: its memory and its view of the persisted index
        # one OpenMP thread for single-query search (both stores run faiss underneath); on a shared
        # machine, spinning OpenMP threads make per-query latency erratic
        out = subprocess.run([sys.executable, __file__, "--search", str(version), "--store", name],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"store": name, "insert_s": insert_s, "rate": n / insert_s, "disk_b": folder_bytes(version) / n,
                     **row, "rss_b": row["rss"] / n})
        print(f"  {name}: insert {insert_s:.1f}s, search {row['qps']:.0f} QPS", flush=True)
    return rows


def search_in_this_process(version: Path, name: str) -> None:
    """Open the stored index, search every query alone; print one JSON line (open time, QPS, recall, RSS growth)."""
    queries = np.load(version.parent / "queries.npy")
    truth = np.load(version.parent / "truth.npy")
    reader = stage(name)
    before = rss_bytes()
    start = time.perf_counter()
    reader.load(version)
    reader.search(queries[:1], K)  # first search: Milvus loads its segments, FAISS pages in
    open_s = time.perf_counter() - start
    rss = rss_bytes() - before
    start = time.perf_counter()
    found = [reader.search(q[None, :], K)[1][0] for q in queries]
    qps = len(queries) / (time.perf_counter() - start)
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    print(json.dumps({"open_s": open_s, "qps": qps, "recall": recall, "rss": rss}))


def ray_rows(n_docs: int, repeats: int, work: Path, overrides: list[str]) -> list[dict]:
    from bench_index import write_subset

    from indexer.build import build_index
    from pipeline.config import load_config

    corpus = work / "corpus"
    write_subset(corpus, n_docs)
    config = load_config(ROOT / "configs" / "offline.yaml", ["reranker.enabled=false", *overrides])
    rows = []
    for repeat in range(repeats):
        versions = {}
        for engine in ("local", "ray"):
            index = work / f"index-{engine}-{repeat}"
            start = time.perf_counter()
            report = build_index(corpus, config, index, reuse=False, engine=engine)
            wall = time.perf_counter() - start
            seconds = report.manifest.build_seconds
            rows.append({"engine": engine, "repeat": repeat, "wall_s": wall, "chunks": report.manifest.counts["chunks"],
                         "ray_start_s": seconds.get("ray_start", 0.0), "chunk_s": seconds["chunk"],
                         "encode_s": seconds["encode"]})
            versions[engine] = report.version_dir
            print(f"  {engine} #{repeat}: {wall:.1f}s", flush=True)
        if repeat == 0:
            same = same_index(versions["local"], versions["ray"])
            print(f"  same chunks in the same order: {same['chunks']}; vectors max |diff| {same['max_diff']:.1e}")
        for version in versions.values():
            shutil.rmtree(version.parent, ignore_errors=True)
    return rows


def same_index(a: Path, b: Path) -> dict:
    from pipeline.store import CHUNKS, EMBEDDINGS, ChunkStore

    chunks = [ChunkStore(v / CHUNKS).doc_texts() for v in (a, b)]
    return {"chunks": chunks[0] == chunks[1],
            "max_diff": float(np.abs(np.load(a / EMBEDDINGS) - np.load(b / EMBEDDINGS)).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("store", "ray", "both"), default="both")
    parser.add_argument("--n", type=int, default=100_000, help="vectors for the store comparison")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--types", nargs="+",
                        default=["faiss Flat", "faiss HNSW32", "milvus-lite FLAT", "milvus-lite HNSW"],
                        help="stores to compare; 'milvus-lite IVF_FLAT' too (slow inserts)")
    parser.add_argument("--docs", type=int, default=500, help="SciFact documents for the Ray comparison")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the Ray comparison (e.g. ray.cpus_per_actor=2)")
    parser.add_argument("--search", type=Path, help=argparse.SUPPRESS)  # internal: the reader process
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search:
        search_in_this_process(args.search, args.store)
        return 0
    header("Vector stores (FAISS vs Milvus Lite) and the Ray engine vs the single-process build")
    import faiss
    import pymilvus
    import ray
    import torch

    print(f"faiss {faiss.__version__}, pymilvus {pymilvus.__version__}, ray {ray.__version__}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        if args.part in ("store", "both"):
            start = time.perf_counter()
            (work / "store").mkdir()
            rows = store_rows(args.n, args.queries, args.types, work / "store")
            print(f"\n{args.n:,} vectors x {DIM}-d, {args.queries} single-query searches, k={K} "
                  f"({time.perf_counter() - start:.0f}s)\n")
            print("| store | insert s | insert vectors/s | open + first search s | QPS | recall@50 | "
                  "disk bytes/vector | reader RSS bytes/vector |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['store']} | {r['insert_s']:.1f} | {r['rate']:,.0f} | {r['open_s']:.1f} | {r['qps']:.0f} | "
                      f"{r['recall']:.3f} | {r['disk_b']:.0f} | {r['rss_b']:.0f} |")
            by_name = {r["store"]: r for r in rows}
            for milvus, faiss_name in (("milvus-lite FLAT", "faiss Flat"), ("milvus-lite HNSW", "faiss HNSW32")):
                if milvus in by_name and faiss_name in by_name:
                    m, f = by_name[milvus], by_name[faiss_name]
                    print(f"{milvus} / {faiss_name}: insert time {m['insert_s'] / f['insert_s']:.1f}x, "
                          f"QPS {m['qps'] / f['qps']:.2f}x, recall@50 {m['recall']:.3f} vs {f['recall']:.3f}")
        if args.part in ("ray", "both"):
            if not (SHARED_DATA / "scifact").is_dir():
                print("\nray: skipped, ../shared/data/scifact is absent")
                return 0
            start = time.perf_counter()
            rows = ray_rows(args.docs, args.repeats, work / "ray", args.set)
            print(f"\nSciFact first {args.docs} documents -> {rows[0]['chunks']} chunks, configs/offline.yaml "
                  f"(128-token chunks){', ' + ' '.join(args.set) if args.set else ''}, fresh index, no reuse "
                  f"({time.perf_counter() - start:.0f}s)\n")
            print("| engine | run | ray start s | chunk s | encode s | total wall s |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['engine']} | {r['repeat']} | {r['ray_start_s']:.1f} | {r['chunk_s']:.1f} | "
                      f"{r['encode_s']:.1f} | {r['wall_s']:.1f} |")
            local = min(r["wall_s"] for r in rows if r["engine"] == "local")
            ray_wall = min(r["wall_s"] for r in rows if r["engine"] == "ray")
            local_work = min(r["chunk_s"] + r["encode_s"] for r in rows if r["engine"] == "local")
            ray_work = min(r["chunk_s"] + r["encode_s"] for r in rows if r["engine"] == "ray")
            print(f"\nray / single process, total wall (best of {args.repeats}): {ray_wall / local:.2f}x; "
                  f"chunk + encode only (without starting Ray): {ray_work / local_work:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
