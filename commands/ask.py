"""Ask a question: python scripts/ask.py "QUERY" [--config FILE] [--index DIR] [--json]."""

from __future__ import annotations

import sys

from commands.common import common_parser, run, setup_logging


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("query", help="the question")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--show", type=int, default=10,
                        help="retrieved hits to show beside the reranked ones (default 10)")
    parser.add_argument("--top-k", type=int, default=None, help="candidates to retrieve (default: retriever.top_k)")
    parser.add_argument("--top-n", type=int, default=None, help="hits the reranker keeps (default: reranker.top_n)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from pipeline.errors import InputError
    from pipeline.pipeline import Pipeline
    from pipeline.render import print_side_by_side, result_to_json

    for flag, value in (("--top-k", args.top_k), ("--top-n", args.top_n), ("--show", args.show)):
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be a positive number, got {value}")
    pipe = Pipeline.from_yaml(args.config, args.overrides, args.index)
    result = pipe.ask(args.query, top_k=args.top_k, top_n=args.top_n)
    if args.json:
        print(result_to_json(result))
    else:
        print_side_by_side(result, show=args.show)
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
