"""Indexing: first build vs rebuild of an unchanged corpus vs a 1%-changed one, and encoding overhead.

Uses the first N documents of SciFact (../shared/data/scifact) with the offline
config (bundled all-MiniLM-L6-v2). Reports wall time of each build and the
ratios, then the project's encoding rate against plain
``SentenceTransformer.encode`` on the same chunk texts, measured alternately in
one process (best of the repeats for each).

    python benchmarks/bench_index.py [--docs 1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_DATA, header


def write_subset(out: Path, n_docs: int) -> list[dict]:
    with gzip.open(SHARED_DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for _, line in zip(range(n_docs), handle)]
    save(out, docs)
    return docs


def save(out: Path, docs: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "docs.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    args = parser.parse_args()
    if not (SHARED_DATA / "scifact").is_dir():
        print(f"skipped: {SHARED_DATA / 'scifact'} is absent")
        return 0
    header(f"Index builds on {args.docs} SciFact documents")
    from indexer.build import build_index
    from pipeline.config import load_config
    from pipeline.pipeline import build_stage
    from pipeline.store import load_index

    config = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        corpus, index = work / "corpus", work / "index"
        docs = write_subset(corpus, args.docs)

        def timed_build(**kwargs):
            start = time.perf_counter()
            report = build_index(corpus, config, index, **kwargs)
            return time.perf_counter() - start, report

        first_s, first = timed_build(reuse=False)
        same_s, same = timed_build(update=True)
        changed = random.Random(0).sample(range(len(docs)), max(1, len(docs) // 100))
        for i in changed:
            docs[i] = {**docs[i], "text": docs[i]["text"] + " (revised)"}
        save(corpus, docs)
        pct_s, pct = timed_build(update=True)
        chunks = first.manifest.counts["chunks"]
        print(f"\nconfig: {args.config} ({config.embedder.params.model}, chunking {config.chunking.model_dump()})")
        print(f"corpus: {len(docs)} documents -> {chunks} chunks\n")
        print("| build | wall s | chunks encoded | x faster than first build |")
        print("|---|---|---|---|")
        for name, secs, report in (("first (full)", first_s, first), ("unchanged corpus", same_s, same),
                                   (f"{len(changed)} docs (1%) changed", pct_s, pct)):
            print(f"| {name} | {secs:.1f} | {report.changes['encoded_chunks']} | {first_s / secs:.1f} |")

        # Encoding overhead: the project's embedder vs plain SentenceTransformer.encode, same texts.
        bundle = load_index(index, build_stage(config.index))
        texts = bundle.chunks.texts()
        embedder = build_stage(config.embedder)
        plain = embedder.model  # the same SentenceTransformer object, called directly
        params = config.embedder.params
        best = {"project": float("inf"), "plain": float("inf")}
        for _ in range(args.repeats):
            start = time.perf_counter()
            plain.encode(texts, batch_size=params.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            best["plain"] = min(best["plain"], time.perf_counter() - start)
            start = time.perf_counter()
            embedder.encode_documents(texts)
            best["project"] = min(best["project"], time.perf_counter() - start)
        rate = {k: len(texts) / v for k, v in best.items()}
        print(f"\nencoding {len(texts)} chunks, best of {args.repeats}: project {rate['project']:.1f} chunks/s, "
              f"plain SentenceTransformer.encode {rate['plain']:.1f} chunks/s, "
              f"ratio {rate['project'] / rate['plain']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
