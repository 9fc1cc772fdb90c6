"""Make reranker training groups: python scripts/make_training_data.py --out DIR [sources...].

Writes one JSONL file of {"query", "positive", "negatives", "origin"} groups per source into DIR,
plus SOURCES.json (what was read, its licence, the counts), for scripts/train_reranker.py --data DIR.
Sources (training/synthetic.py): --sections FOLDER (HTML/Markdown heading -> section), --man FOLDER
(manual page description -> its text), --labelled BEIR_DIR (a collection's train split, the first
--dev-queries of it held back as train_reranker.py holds them). No test split is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from commands.common import common_parser, run, setup_logging


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSONL files")
    parser.add_argument("--sections", action="append", type=Path, default=[], metavar="FOLDER",
                        help="HTML/Markdown documents: heading -> section groups")
    parser.add_argument("--man", action="append", type=Path, default=[], metavar="FOLDER",
                        help="manual pages (*.gz troff): description -> text groups")
    parser.add_argument("--labelled", action="append", type=Path, default=[], metavar="BEIR_DIR",
                        help="a BEIR collection whose --split judged pairs become groups")
    parser.add_argument("--split", default="train")
    parser.add_argument("--dev-queries", type=int, default=100,
                        help="judged queries held back per --labelled collection (as train_reranker.py does)")
    parser.add_argument("--licence", action="append", default=[], metavar="FOLDER=TEXT",
                        help="the licence of a --sections/--man folder's documents, for the model card")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--siblings", type=int, default=3, help="negatives from the same document (sections)")
    parser.add_argument("--substitution-share", type=float, default=0.5)
    parser.add_argument("--max-groups", type=int, default=None, help="per source")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--int8-pairs", type=Path, default=None, metavar="FILE",
                        help="also write 300 (query, passage) pairs from the groups made, for a model's "
                             "calibration_pairs.jsonl (int8 export)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from pipeline.errors import InputError
    from training import synthetic
    from training.data import source_licence

    licences = dict(item.split("=", 1) for item in args.licence if "=" in item)
    if not (args.sections or args.man or args.labelled):
        raise InputError("nothing to make: give --sections, --man or --labelled")
    common = dict(negatives=args.negatives, substitution_share=args.substitution_share, max_groups=args.max_groups,
                  seed=args.seed)
    sources = []
    for kind, folders in (("sections", args.sections), ("man", args.man), ("labelled", args.labelled)):
        for folder in folders:
            if kind == "sections":
                passages, pool, siblings = synthetic.html_sections(folder), None, args.siblings
            elif kind == "man":
                passages, pool, siblings = synthetic.man_pages(folder), None, 0
            else:
                passages, corpus = synthetic.labelled_passages(folder, args.split, args.dev_queries, args.seed)
                pool, siblings = list(corpus.values()), 0
            name = f"{kind}-{folder.name or 'root'}"
            groups = synthetic.make_groups(passages, name, pool=pool, siblings=siblings, **common)
            counts = synthetic.write_groups(groups, args.out / f"{name}.jsonl")
            licence = licences.get(str(folder)) or source_licence(folder, "unknown: give --licence FOLDER=TEXT")
            sources.append({"source": name, "path": str(folder), "kind": kind, "passages": len(passages),
                            "groups": dict(counts), "licence": licence,
                            **({"split": args.split, "dev_queries_held_back": args.dev_queries}
                               if kind == "labelled" else {})})
            print(f"{name}: {sum(counts.values())} groups ({dict(counts)}) from {len(passages)} passages")
    if args.int8_pairs is not None:
        pairs = synthetic.int8_calibration_pairs(args.out, seed=args.seed)
        args.int8_pairs.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    (args.out / "SOURCES.json").write_text(json.dumps(sources, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
