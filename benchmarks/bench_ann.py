"""Approximate index types against exact search on synthetic 384-d vectors.

For each size (100k, 1M by default): build time, bytes per vector, queries per
second and recall@50 against the exact (Flat) top-50, for HNSW and IVF with a
few search settings. Vectors are a mixture of Gaussian clusters, normalized
(real embeddings are clustered; uniform noise is the worst case for any ANN
index and says little about real corpora).

    python benchmarks/bench_ann.py                 # 100k and 1M
    python benchmarks/bench_ann.py --sizes 100000  # quicker
    python benchmarks/bench_ann.py --sizes 1000000 --types ivf  # skip the (slow) HNSW build
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import header

DIM = 384
K = 50


def synthetic(n: int, dim: int, seed: int, clusters: int = 2000) -> np.ndarray:
    """``n`` normalized points around ``clusters`` fixed centres (the same centres for every seed).

    Base vectors and queries share the centres, as real queries fall near the documents they ask
    for; only the noise differs between seeds. Queries drawn around other centres would be far from
    everything, the worst case for any ANN index and unlike real corpora.
    """
    centres = np.random.default_rng(12345).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    step = 200_000
    for start in range(0, n, step):
        m = min(step, n - start)
        labels = rng.integers(0, clusters, size=m)
        out[start : start + m] = centres[labels] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def memory_bytes(index) -> int:
    import faiss

    writer = faiss.VectorIOWriter()
    faiss.write_index(index, writer)
    return int(faiss.vector_to_array(writer.data).nbytes)


def qps(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    index.search(queries[:10], K)  # warm-up
    start = time.perf_counter()
    _, ids = index.search(queries, K)
    return len(queries) / (time.perf_counter() - start), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def run(n: int, n_queries: int, types: set[str]) -> list[dict]:
    import faiss

    base = synthetic(n, DIM, seed=0)
    queries = synthetic(n_queries, DIM, seed=1)
    rows = []

    def record(name, index, build_s, setting=""):
        speed, ids = qps(index, queries)
        rows.append({"n": n, "index": name, "setting": setting, "build_s": build_s,
                     "bytes_per_vector": memory_bytes(index) / n, "qps": speed, "ids": ids})

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(base)
    record("Flat", flat, time.perf_counter() - start)
    truth = rows[-1]["ids"]

    if "hnsw" in types:
        start = time.perf_counter()
        hnsw = faiss.index_factory(DIM, "HNSW32", faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(base)
        build = time.perf_counter() - start
        for ef in (64, 128, 256):
            hnsw.hnsw.efSearch = ef
            record("HNSW32", hnsw, build, f"efSearch={ef}")

    if "ivf" in types:
        nlist = int(4 * np.sqrt(n))
        start = time.perf_counter()
        ivf = faiss.index_factory(DIM, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.train(base[np.random.default_rng(2).choice(n, size=min(n, 40 * nlist), replace=False)])
        ivf.add(base)
        build = time.perf_counter() - start
        for nprobe in (8, 16, 32, 64):
            ivf.nprobe = nprobe
            record(f"IVF{nlist},Flat", ivf, build, f"nprobe={nprobe}")

    flat_qps = rows[0]["qps"]
    for row in rows:
        row["recall@50"] = recall(row.pop("ids"), truth)
        row["speedup"] = row["qps"] / flat_qps
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="hnsw,ivf", help="comma list of index types beside Flat: hnsw, ivf")
    args = parser.parse_args()
    header("ANN index types vs exact search (synthetic clustered 384-d vectors, inner product)")
    import faiss

    print(f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}, {args.queries} queries, k={K}\n")
    print("| vectors | index | search setting | build s | bytes/vector | QPS | x Flat QPS | recall@50 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for r in run(n, args.queries, {t.strip() for t in args.types.split(",")}):
            print(f"| {r['n']:,} | {r['index']} | {r['setting'] or '-'} | {r['build_s']:.1f} | "
                  f"{r['bytes_per_vector']:.0f} | {r['qps']:.0f} | {r['speedup']:.1f} | {r['recall@50']:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
