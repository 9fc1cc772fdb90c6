"""The answer step on this CPU: speed of the bundled model, and how often its citations are relevant.

1. Speed: load time of SmolLM2-135M-Instruct (bundled, GGUF dequantized to fp32), then for each
   question time to first token, generation tokens/s and prompt size (five passages of data/).
2. Citations: for labelled questions over the sample corpus (data/), the share of cited passages
   (made by the model or attributed by similarity) whose source is a relevant file, with the
   reranker on versus off (off: the first stage's top_n are the context). Same model, same prompt.

    python benchmarks/bench_answer.py [--config configs/offline-answer.yaml] [--max-tokens 64]

The index is the config's (build it first: python scripts/build_index.py data/).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import ROOT, header

# question -> the files that answer it (a cited passage from any other file counts as not relevant)
LABELLED = {
    "symptoms of vitamin D deficiency": {"health/vitamin-d-deficiency.md", "zh/vitamin-d-queshao.md"},
    "how do I install python packages": {"tech/installing-python-packages-with-pip.md"},
    "where does vitamin D come from": {"health/vitamin-d-sources.md", "zh/vitamin-d-laiyuan.md"},
    "what causes anemia": {"health/iron-deficiency.md", "health/vitamin-b12-deficiency.md",
                           "zh/tie-queshao-pinxue.md"},
    "how is a cross-encoder different from a bi-encoder": {"tech/cross-encoders-vs-bi-encoders.md"},
    "is the python snake venomous": {"science/python-snake.md"},
    "which planet is closest to the sun": {"science/mercury-planet.md"},
    "维生素D缺乏有什么症状": {"zh/vitamin-d-queshao.md", "health/vitamin-d-deficiency.md"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline-answer.yaml"))
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    header("answer step: bundled generator speed and citation relevance, reranker on vs off")

    from pipeline import Pipeline

    pipe = Pipeline.from_yaml(args.config, [f"generator.max_tokens={args.max_tokens}"])
    pipe.load(generator=False)
    start = time.perf_counter()
    pipe.load()
    print(f"generator load: {time.perf_counter() - start:.1f} s ({pipe.config.generator.params.model})")
    pipe.ask("warm-up question", generate=True)

    rows = []
    for query, relevant in LABELLED.items():
        for rerank in (True, False):
            result = pipe.ask(query, rerank=rerank, generate=True)
            answer = result.answer
            if answer is None:
                print(f"  {query!r} rerank={rerank}: no answer: {result.answer_error}")
                continue
            t = answer.timings
            decode = max(t["generate"] - t.get("first_token", 0.0), 1e-9)
            cited = [p.source for p in answer.cited_passages]
            good = sum(s in relevant for s in cited)
            rows.append({"rerank": rerank, "ttft": t.get("first_token", float("nan")), "gen": t["generate"],
                         "tps": (answer.completion_tokens - 1) / decode, "prompt": answer.prompt_tokens,
                         "tokens": answer.completion_tokens, "cited": len(cited), "good": good,
                         "model_made": sum(c.origin == "model" for c in answer.citations),
                         "context_relevant": sum(h.source in relevant for h in answer.passages)})
            print(f"  rerank={'on ' if rerank else 'off'} {query[:44]:44s} ttft {rows[-1]['ttft']:5.2f} s  "
                  f"{rows[-1]['tps']:5.1f} tok/s  prompt {answer.prompt_tokens:4d}  cited {cited}  relevant {good}")

    print()
    for rerank in (True, False):
        sel = [r for r in rows if r["rerank"] is rerank]
        if not sel:
            continue
        cited = sum(r["cited"] for r in sel)
        good = sum(r["good"] for r in sel)
        print(f"reranker {'on ' if rerank else 'off'}: {len(sel)} answers; TTFT p50 "
              f"{np.median([r['ttft'] for r in sel]):.2f} s; decode {np.median([r['tps'] for r in sel]):.1f} tokens/s "
              f"(p50); prompt {np.median([r['prompt'] for r in sel]):.0f} tokens (p50); citations {cited}, relevant "
              f"{good} ({good / max(cited, 1):.0%}); answers citing a relevant passage "
              f"{sum(r['good'] > 0 for r in sel)}/{len(sel)}; relevant passages in the context "
              f"{sum(r['context_relevant'] for r in sel)}/{5 * len(sel)}; citations the model wrote itself "
              f"{sum(r['model_made'] for r in sel)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
