"""Index a corpus folder: python scripts/build_index.py CORPUS_DIR [--config FILE] [--index DIR] [--engine ray]."""

from __future__ import annotations

import math
import sys

from commands.common import common_parser, run, setup_logging, show_progress


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("corpus", help="folder of .pdf/.html/.docx/.md/.txt/.jsonl[.gz] files, a BEIR collection, "
                                       "or one file")
    parser.add_argument(
        "--update", action="store_true",
        help="update an existing index: encode only added or changed documents, drop deleted ones",
    )
    parser.add_argument("--no-reuse", action="store_true", help="re-encode every chunk, even unchanged ones")
    parser.add_argument("--max-file-mb", type=float, default=None,
                        help="skip files (one document each) larger than this (default 32)")
    parser.add_argument(
        "--follow-links", action="store_true",
        help="also index symlinks that lead outside the corpus folder (default: skip and count them)",
    )
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="where chunking and encoding run: this process (default) or Ray Data (the config's 'ray' section)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from indexer.build import build_index
    from indexer.corpus import MAX_FILE_MB
    from pipeline.config import load_config
    from pipeline.errors import InputError

    if args.update and args.no_reuse:
        raise InputError("--update and --no-reuse contradict each other; pick one")
    if args.max_file_mb is not None and not (math.isfinite(args.max_file_mb) and args.max_file_mb > 0):
        raise InputError(f"--max-file-mb must be a positive number, got {args.max_file_mb}")
    config = load_config(args.config, args.overrides)
    report = build_index(
        args.corpus, config, args.index, update=args.update, reuse=not args.no_reuse,
        show_progress=show_progress(), max_file_mb=args.max_file_mb or MAX_FILE_MB, engine=args.engine,
        follow_links=args.follow_links,
    )
    m = report.manifest
    seconds = m.build_seconds
    encode = seconds.get("encode", 0.0)
    encoded = m.counts["encoded_chunks"]
    rate = f"{encoded / encode:.1f} chunks/s" if encoded and encode > 0 else "nothing to encode"
    print(
        f"indexed {m.counts['documents']} documents as {m.counts['chunks']} chunks "
        f"({m.embedder['model']}, {m.embedder['dimension']}-d) into {report.path}"
    )
    print(
        f"encode {encode:.1f}s ({rate}), total "
        f"{sum(seconds.values()):.1f}s; skipped {len(report.skipped)}, "
        f"unsupported files {m.counts['unsupported_files']}" + _by_extension(report.unsupported)
    )
    if m.readers:
        print("read: " + ", ".join(f"{name} {r['documents']}" for name, r in m.readers.items()))
    c = report.changes
    print(
        f"documents: {c['added']} added, {c['changed']} changed, {c['removed']} removed, {c['unchanged']} unchanged; "
        f"chunks: {c['encoded_chunks']} encoded, {c['reused_chunks']} reused"
    )
    for where, why in report.skipped[:20]:
        print(f"  skipped {where}: {why}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (see the warnings above)")
    if args.verbose:
        for name in report.unsupported:
            print(f"  not read (no reader for this format): {name}")
    for name in report.removed:
        print(f"  removed old version {report.path / name}")
    _prepare_reranker(config)
    return 0


def _prepare_reranker(config) -> None:
    """Load the config's reranker once when it scores with a CPU runtime (OpenVINO/ONNX), so that the
    one-time export happens at build time and not on the first question. A reranker that cannot load
    is a warning here (the index is built); asking will report it."""
    if config.reranker is None:
        return
    import time

    from pipeline.errors import RagError
    from pipeline.pipeline import build_stage
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker

    start = time.perf_counter()
    try:
        stage = build_stage(config.reranker)
        if not isinstance(stage, CrossEncoderReranker) or stage.choose_backend() == "torch":
            return  # the torch model loads in seconds at the first question: nothing to prepare
        stage.load()
    except RagError as exc:
        print(f"warning: the reranker did not load ({exc}); asking will fail until it does", file=sys.stderr)
        return
    facts = stage.describe()
    why = f" ({facts['backend_reason']})" if facts.get("backend_reason") else ""
    print(f"reranker ready: {facts['backend']} backend, quantize {facts['quantize']}{why}, "
          f"{time.perf_counter() - start:.1f}s")


def _by_extension(names: list[str]) -> str:
    """`` (.png 2, .xlsx 1)``: unsupported files counted by extension; empty when there are none."""
    if not names:
        return ""
    from collections import Counter

    from indexer.readers import suffix_of

    counts = Counter(suffix_of(name) for name in names).most_common()
    return " (" + ", ".join(f"{ext} {n}" for ext, n in counts) + "; -v names them)"


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
