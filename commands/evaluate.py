"""Evaluate and compare pipeline configs on a labelled collection (BEIR layout).

python scripts/evaluate.py --data DIR --config A.yaml [--config B.yaml ...] [--split test] [--out DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

from commands.common import ROOT, run, setup_logging, show_progress


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="collection folder: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--config", dest="configs", action="append", required=True, metavar="[NAME=]YAML",
                        help="a config to evaluate (repeat; the first is the baseline); NAME defaults to the file stem")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[NAME:]KEY=VALUE",
                        help="override a value in every config, or only in config NAME "
                             "(e.g. --set reranker.model=models/my-reranker, --set dense:retriever.top_k=100)")
    parser.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    parser.add_argument("--max-queries", type=int, default=None, metavar="N",
                        help="evaluate a seeded random subset of N judged queries (default: all)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the --max-queries subset (default 42)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval/<collection>-<time>)")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "cache"), help="where evaluation indexes are kept")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="how missing indexes are built: in this process (default) or on Ray (as build_index.py)")
    parser.add_argument("--stat-test", choices=("student", "fisher"), default="student",
                        help="paired test between configs: t-test (student) or randomization (fisher)")
    parser.add_argument("--max-p", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and faiss (default: theirs); "
                             "1 keeps latencies sane on a busy machine")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for progress logs, -vv for debug")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from evaluation.collection import load_collection
    from evaluation.report import print_table, write_outputs
    from evaluation.runner import evaluate_configs, parse_config_specs
    from pipeline.errors import InputError

    if not 0 < args.max_p < 1:
        raise InputError(f"--max-p must be between 0 and 1, got {args.max_p}")
    if args.threads is not None:
        if args.threads <= 0:
            raise InputError(f"--threads must be a positive number, got {args.threads}")
        set_threads(args.threads)
    if args.max_queries is not None and args.max_queries <= 0:
        raise InputError(f"--max-queries must be a positive number, got {args.max_queries}")
    collection = load_collection(args.data, args.split)
    if args.max_queries is not None:
        collection = collection.sample(args.max_queries, args.seed)
    specs = parse_config_specs(args.configs, args.overrides)
    report = evaluate_configs(collection, specs, args.cache, stat_test=args.stat_test, max_p=args.max_p,
                              show_progress=show_progress(), engine=args.engine)
    out = Path(args.out) if args.out else ROOT / "runs" / "eval" / f"{collection.name}-{datetime.now():%Y%m%d-%H%M%S}"
    command = "python scripts/evaluate.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    paths = write_outputs(report, out, command)
    print_table(report)
    print(f"wrote {paths['json']}, {paths['markdown'].name}, {paths['per_query'].name}, {paths['plot'].name}")
    return 0


def set_threads(n: int) -> None:
    """Cap torch's and faiss's thread pools (a process-wide setting, so it lives in the script)."""
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
