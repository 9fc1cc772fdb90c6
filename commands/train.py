"""Fine-tune a cross-encoder reranker: python scripts/train_reranker.py --data DIR --base MODEL --out DIR.

DIR is a BEIR-layout collection with a train split (hard negatives are mined with the --config
pipeline's first stage) or a folder of {"query", "positive", "negatives"} JSONL. The output folder
loads with CrossEncoder(OUT) and holds a model card. With --eval-data, the finished model is also
measured behind the first stage on those collections' --eval-split, and the numbers go in the card.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from commands.common import common_parser, run, setup_logging, show_progress

FIRST_STAGES = {
    "dense": {"type": "dense", "top_k": 50},
    "bm25": {"type": "bm25", "top_k": 50},
    "hybrid": {"type": "hybrid", "top_k": 50},
}


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="training collection (BEIR layout) or JSONL folder; repeat to mix several")
    parser.add_argument("--split", default="train", help="qrels split to train on (default train; never test)")
    parser.add_argument("--base", required=True, help="encoder or cross-encoder: bundled:all-MiniLM-L6-v2, a hub id, a folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (loads with CrossEncoder(OUT))")
    parser.add_argument("--loss", choices=("groupwise", "bce"), default="groupwise")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="groups per step (BCE: pairs = groups x group size)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps")
    parser.add_argument("--max-length", type=int, default=192, help="tokens per (query, passage) pair")
    parser.add_argument("--negatives", type=int, default=7, help="hard negatives per group")
    parser.add_argument("--mine-top-k", type=int, default=30, help="mine negatives from the first stage's top-k")
    parser.add_argument("--dev-queries", type=int, default=100, help="train queries held back to pick the checkpoint")
    parser.add_argument("--dev-top-k", type=int, default=20, help="candidates per dev query to rerank")
    parser.add_argument("--pseudo-queries", type=int, default=0, help="(title -> text) groups per collection")
    parser.add_argument("--max-queries", type=int, default=None, help="use at most this many train queries")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save-steps", type=int, default=50, help="checkpoint (and dev score) every N steps")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (default: the epochs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints (default runs/train/<out name>)")
    parser.add_argument("--restart", action="store_true", help="ignore existing checkpoints instead of resuming")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="first-stage indexes")
    parser.add_argument("--eval-data", action="append", default=[], metavar="DIR", help="collection to measure on")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--eval-first-stages", default="dense", help="comma list of: " + ", ".join(FIRST_STAGES))
    parser.add_argument("--eval-top-k", type=int, default=50, help="first-stage candidates to rerank")
    parser.add_argument("--eval-max-queries", type=int, default=None, help="seeded query subset per collection")
    parser.add_argument("--eval-weights", default="0",
                        help="first-stage weights to interpolate with the reranker's score, e.g. 0,0.2,0.4 (0 = rerank)")
    parser.add_argument("--eval-dev", action="store_true",
                        help="also measure on the dev queries of the first --data and pick each first stage's weight there")
    parser.add_argument("--skip-training", action="store_true", help="only measure the model already in --out")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    import training
    from pipeline.config import load_config
    from pipeline.errors import InputError

    if args.split == "test":
        raise InputError("--split test: training on a test split is not allowed; use train (or a dev split)")
    stages = [s.strip() for s in args.eval_first_stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in FIRST_STAGES]
    if unknown:
        raise InputError(f"--eval-first-stages: unknown {unknown[0]!r}; choose from {', '.join(FIRST_STAGES)}")
    config = load_config(args.config, args.overrides)
    settings = training.TrainSettings(
        base=args.base, out=args.out, work_dir=args.work_dir, loss=args.loss, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup, max_length=args.max_length,
        seed=args.seed, save_steps=args.save_steps, max_steps=args.max_steps, device=args.device,
        progress=show_progress(), resume=not args.restart,
    )
    report_path = args.out / "training_report.json"
    if args.skip_training:
        from sentence_transformers.cross_encoder import CrossEncoder

        saved = json.loads(report_path.read_text(encoding="utf-8"))
        report = training.TrainReport(**saved["report"]) if saved.get("report") else None
        sources = saved["sources"]
        if saved.get("settings"):  # the card describes the run as trained, not this command's defaults
            work_dir = saved["settings"].get("work_dir")
            settings = training.TrainSettings(**{**saved["settings"], "out": args.out,
                                                 "work_dir": Path(work_dir) if work_dir else None})
        command = saved.get("command") or _command(argv, drop="--skip-training")
        measured = saved.get("measurements", [])
        model = CrossEncoder(str(args.out), max_length=args.max_length, device="cpu" if args.device == "auto" else args.device)
        model.model.float()
    else:
        data = training.TrainingData()
        for folder in args.data:
            data.extend(training.load_groups(
                folder, args.split, config, cache_dir=args.cache_dir, num_negatives=args.negatives,
                mine_top_k=args.mine_top_k, dev_queries=args.dev_queries if not data.dev else 0,
                dev_top_k=args.dev_top_k, pseudo_queries=args.pseudo_queries, max_queries=args.max_queries,
                seed=args.seed,
            ))
        print(f"training groups: {len(data.train)} ({', '.join(_origins(data.train))}); dev queries: {len(data.dev)}")
        model, report = training.train_reranker(data.train, data.dev, settings)
        sources = data.sources
        command = _command(argv)
        measured = []
        print(f"trained {report.steps} steps, {report.train_pairs} pairs in {report.seconds / 60:.1f} min "
              f"({report.pairs_per_second:.1f} pairs/s); dev nDCG@10 {report.dev_ndcg10}")
    size = training.save_compact(model, args.out)
    measurements = []
    if args.eval_data or args.eval_dev:
        scorer = training.PairScorer(model, batch_size=32)
        first_stages = {s: {**FIRST_STAGES[s], "top_k": args.eval_top_k} for s in stages}
        weights = [float(w) for w in args.eval_weights.split(",") if w.strip()]
        chosen = None
        if args.eval_dev:
            dev_collection = training.read_collection(args.data[0], args.split)
            dev = training.measure_reranking(
                args.data[0], args.split, config, scorer, cache_dir=args.cache_dir, first_stages=first_stages,
                top_k=args.eval_top_k, weights=weights, progress=show_progress(),
                query_ids=training.dev_query_ids(dev_collection, args.dev_queries, args.seed),
            )
            dev["split"] = f"{args.split} (dev queries)"
            # Each first stage's weight is the one best on dev (ties: the smaller, i.e. more reranker).
            chosen = {name: float(max(r["interpolated"].items(), key=lambda kv: (kv[1], -float(kv[0])))[0])
                      for name, r in dev["results"].items()}
            dev["chosen_weights"] = chosen
            measurements.append(dev)
            _print(dev)
        for folder in args.eval_data:
            m = training.measure_reranking(
                folder, args.eval_split, config, scorer, cache_dir=args.cache_dir, first_stages=first_stages,
                top_k=args.eval_top_k, max_queries=args.eval_max_queries, weights=weights + list((chosen or {}).values()),
                seed=args.seed, progress=show_progress(),
            )
            if chosen:
                m["chosen_weights"] = chosen
            measurements.append(m)
            _print(m)
        print(f"scored {scorer.scored} pairs in {scorer.seconds:.0f}s "
              f"({scorer.scored / max(scorer.seconds, 1e-9):.1f} pairs/s)")
    # Measurements of an earlier --skip-training run stay, unless this run measured the same collection and split.
    fresh = {(m["collection"], m["split"]) for m in measurements}
    measurements = [m for m in measured if (m["collection"], m["split"]) not in fresh] + measurements
    settings_dict = training.asdict(settings) | {"out": str(settings.out), "work_dir": str(settings.work_dir or "")}
    report_path.write_text(json.dumps({
        "report": training.asdict(report) if report else None, "settings": settings_dict, "command": command,
        "sources": sources, "measurements": measurements,
    }, indent=2) + "\n", encoding="utf-8")
    licences = {Path(f).name: _licence(Path(f)) for f in args.data}
    training.write_model_card(args.out, settings=settings, report=report, sources=sources,
                              measurements=measurements, command=command, size_bytes=size, licences=licences)
    print(f"saved {args.out} ({size / 2**20:.1f} MiB of fp16 weights)")
    return 0


def _print(m) -> None:
    for name, r in m["results"].items():
        w = (m.get("chosen_weights") or {}).get(name)
        fused = f"; first-stage weight {w:g} (dev): {r['interpolated'][f'{w:g}']:.4f}" if w is not None else ""
        print(f"{m['collection']}/{m['split']} ({m['queries']} queries) {name}: nDCG@10 "
              f"{r['first_stage']:.4f} -> {r['reranked']:.4f} ({r['delta']:+.4f}){fused}; all: {r['interpolated']}")


def _command(argv, drop: str = "") -> str:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != drop]
    return "python scripts/train_reranker.py " + " ".join(shlex.quote(a) for a in args)


def _origins(groups) -> list[str]:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.origin] = counts.get(g.origin, 0) + 1
    return [f"{n} {origin}" for origin, n in counts.items()]


def _licence(folder: Path) -> str:
    source = folder / "SOURCE.md"
    if source.is_file():
        for line in source.read_text(encoding="utf-8").splitlines():
            if "licen" in line.lower():
                return line.strip("-* ").replace("**", "")
    return "unknown: see the data's own documentation"


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
