"""Ask a question: python scripts/ask.py "QUERY" [--config FILE] [--index DIR] [--json] [--answer]
[--filter KEY=VALUE ...] [--explain].

--explain adds, per candidate, why it is where it is: its first-stage place and score (each hybrid
retriever's place), the reranker's raw and calibrated score, the mixed score, the final place and
why it left the final list (top_n, the per-document cap, merged into a neighbour's passage).

--answer adds a cited answer under the two lists, from the config's generator: section; a config
without one uses the bundled local model (as --set generator.type=local would). A config with a
generator answers without the flag; --no-answer skips it.
"""

from __future__ import annotations

import logging
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
    parser.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
                        help="search only matching chunks (repeatable): source=GLOB (e.g. 'manuals/*.pdf'), "
                             "page=N, or a metadata key matched exactly (lang=zh)")
    parser.add_argument("--explain", action="store_true",
                        help="per candidate: first-stage place and score, the reranker's raw and calibrated score, "
                             "the mixed score, the final place and why it left the final list")
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument("--answer", dest="generate", action="store_true", default=None,
                        help="answer from the top_n passages (the config's generator, else the bundled local model)")
    answer.add_argument("--no-answer", dest="generate", action="store_false",
                        help="skip the answer even when the config has a generator")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from pipeline.errors import InputError
    from pipeline.pipeline import Pipeline
    from pipeline.render import print_answer, print_explanation, print_side_by_side, result_to_json

    for flag, value in (("--top-k", args.top_k), ("--top-n", args.top_n), ("--show", args.show)):
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be a positive number, got {value}")
    from pipeline.filters import Filter

    flt = Filter.parse(args.filters) or None
    pipe = Pipeline.from_yaml(args.config, args.overrides, args.index)
    if args.generate and pipe.config.generator is None:
        logging.getLogger(__name__).info("no generator: section in %s; using the bundled local model", args.config)
        pipe = Pipeline.from_yaml(args.config, [*args.overrides, "generator.type=local"], args.index)
    generate = pipe.config.generator is not None if args.generate is None else args.generate
    if args.json:
        result = pipe.ask(args.query, top_k=args.top_k, top_n=args.top_n, filter=flt, generate=generate,
                          explain=args.explain)
        print(result_to_json(result))
        if result.answer_error:
            print(f"error: {result.answer_error}", file=sys.stderr)
            return 1
        return 0
    result = pipe.ask(args.query, top_k=args.top_k, top_n=args.top_n, filter=flt, generate=False,
                      explain=args.explain)
    print_side_by_side(result, show=args.show)
    if result.explanation is not None:
        print_explanation(result.explanation)
    if generate:
        sys.stdout.flush()  # the two lists show while the answer is generated
        print_answer(pipe.answer(result))  # a failure is one line on stderr, under the lists
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
