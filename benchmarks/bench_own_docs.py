"""Your own documents, your own questions: does the reranker bring the page that answers up?

Questions (JSONL: ``{"query", "sources": [...]}``) name the file(s) that answer each one, as the part of
the path up to its extension (``library/re`` matches ``library/re.html`` and ``_sources/library/re.rst.txt``,
not ``library/readline.html``).
Each question is asked twice through the pipeline of ``--config`` over an index that
``build_index.py`` made of the documents: the first stage's best ``--top-n`` alone
(``rerank=False``), then reranked, as ``ask.py`` shows them. For each it reports where the first
chunk from an answering file lands (1 = first), MRR@``top_n``, how often that file is first, the
questions the reranker moved up or down, and the reranking call's median time.

Judgements are file-level and written by hand, so a handful of questions says little by itself;
the point is the per-question list (does the reranker fix or break the questions you care about?).
``benchmarks/data/pydoc_questions.jsonl``: 24 questions for the Python 3.11 documentation
(Debian's ``python3.11-doc``), written for this project:

    apt-get install -y python3.11-doc
    python scripts/build_index.py /usr/share/doc/python3.11/html --index runs/pydoc-index
    python benchmarks/bench_own_docs.py --index runs/pydoc-index [--questions FILE] [--config FILE] [--top-n 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import ROOT, header


def first_rank(hits, sources: list[str]) -> int | None:
    """1-based place of the first hit from a file whose path has one of ``sources`` before an extension."""
    for place, hit in enumerate(hits, 1):
        if any(f"{s}." in hit.source for s in sources):
            return place
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index that build_index.py made with --config")
    parser.add_argument("--questions", type=Path, default=ROOT / "benchmarks" / "data" / "pydoc_questions.jsonl")
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    parser.add_argument("--top-n", type=int, default=10)
    args = parser.parse_args()
    if not args.questions.is_file():
        raise SystemExit(f"--questions {args.questions}: no such file")
    try:
        questions = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--questions {args.questions}: not JSON lines ({exc})") from None
    bad = [q for q in questions if not isinstance(q, dict) or not q.get("query")
           or not isinstance(q.get("sources"), list) or not q["sources"]]
    if bad or not questions:
        raise SystemExit(f"{args.questions}: every line needs a query and a list of sources; "
                         f"not {bad[0] if bad else 'an empty file'}")
    from pipeline import Pipeline

    header("Own documents: the answering file's place, first stage alone vs reranked")
    pipe = Pipeline.from_yaml(args.config, index_path=args.index).load()
    pipe.ask(questions[0]["query"])  # warm-up: the first call pays for lazy set-up
    rows = []
    for q in questions:
        first = pipe.ask(q["query"], top_n=args.top_n, rerank=False).hits
        start = time.perf_counter()
        reranked = pipe.ask(q["query"], top_n=args.top_n).hits
        rows.append((q["query"], first_rank(first, q["sources"]), first_rank(reranked, q["sources"]),
                     time.perf_counter() - start))

    def mrr(col: int) -> float:
        return sum(1 / r[col] for r in rows if r[col]) / len(rows)

    def place(p: int | None) -> str:
        return str(p) if p else f">{args.top_n}"

    print(f"questions: {args.questions} ({len(rows)}); index: {args.index}; config: {args.config}\n")
    print(f"| | first stage alone | reranked |\n|---|---:|---:|\n| MRR@{args.top_n} | {mrr(1):.3f} | {mrr(2):.3f} |")
    print(f"| answering file first | {sum(r[1] == 1 for r in rows)} | {sum(r[2] == 1 for r in rows)} |")
    print(f"| in the top {args.top_n} | {sum(bool(r[1]) for r in rows)} | {sum(bool(r[2]) for r in rows)} |")
    print(f"\nreranked ask, median {statistics.median(r[3] for r in rows) * 1000:.0f} ms\n")
    up = [r for r in rows if (r[2] or 99) < (r[1] or 99)]
    down = [r for r in rows if (r[2] or 99) > (r[1] or 99)]
    print(f"moved up by the reranker: {len(up)}; down: {len(down)}; same place: {len(rows) - len(up) - len(down)}")
    for label, group in (("up", up), ("down", down)):
        for query, a, b, _ in group:
            print(f"  {label:4s} {place(a):>4s} -> {place(b):<4s} {query}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
