"""Index a corpus folder: python scripts/build_index.py CORPUS_DIR [--config FILE] [--index DIR] [--engine ray]
[--watch] (keep it in sync with the folder)."""

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
    watch = parser.add_argument_group("watch mode (keep the index in sync with the folder until stopped)")
    watch.add_argument("--watch", action="store_true",
                       help="after the build, keep watching the folder and update the index after each change")
    watch.add_argument("--debounce", type=float, default=None, metavar="S",
                       help="update once the folder has been quiet this many seconds (default 1)")
    watch.add_argument("--poll", action="store_true",
                       help="poll the folder instead of waiting for OS file events (network file systems; "
                            "also $RAG_WATCH_POLL=1)")
    watch.add_argument("--poll-interval", type=float, default=None, metavar="S",
                       help="seconds between polls (default 1)")
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
    if args.watch:
        return _watch(args, config)
    report = build_index(
        args.corpus, config, args.index, update=args.update, reuse=not args.no_reuse,
        show_progress=show_progress(), max_file_mb=args.max_file_mb or MAX_FILE_MB, engine=args.engine,
        follow_links=args.follow_links,
    )
    _print_report(report, args.verbose)
    _prepare_reranker(config)
    return 0


def _print_report(report, verbose: int) -> None:
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
    if verbose:
        for name in report.unsupported:
            print(f"  not read (no reader for this format): {name}")
    for name in report.removed:
        print(f"  removed old version {report.path / name}")


def _watch(args, config) -> int:
    """Build, then keep the index in sync with the folder until SIGINT/SIGTERM (a second one aborts the update
    in progress; the previous version stays live either way)."""
    import signal
    import threading
    from datetime import datetime

    from indexer.watch import DEBOUNCE_S, POLL_INTERVAL_S, IndexSync
    from pipeline.errors import InputError

    if args.engine != "local":
        raise InputError("--watch runs the local engine; drop --engine ray")
    if args.no_reuse:
        raise InputError("--watch reuses unchanged vectors by design; drop --no-reuse")
    for name in ("debounce", "poll_interval"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"{signal.Signals(signum).name}: stopping after the update in progress (again to abort it)",
              file=sys.stderr, flush=True)

    def on_sync(batch, report, error) -> None:
        now = datetime.now().strftime("%H:%M:%S")
        if error is not None:
            print(f"{now} not updated: {error}; the index keeps its last version", file=sys.stderr, flush=True)
            if batch is None:
                print(f"watching {watcher.corpus} ({watcher.watcher.mode}); Ctrl-C to stop", flush=True)
            return
        if batch is None:
            _print_report(report, args.verbose)
        else:
            c = report.changes
            print(f"{now} {batch.describe()} -> {report.version_dir.name}: documents {c['added']} added, "
                  f"{c['changed']} changed, {c['removed']} removed; chunks {c['encoded_chunks']} encoded, "
                  f"{c['reused_chunks']} reused; {watcher.status.last_seconds:.1f}s")
        for name in report.kept:
            print(f"  kept the indexed version of {name}: it failed to read this time")
        if batch is None:
            print(f"watching {watcher.corpus} ({watcher.watcher.mode}); Ctrl-C to stop", flush=True)

    watcher = IndexSync(
        args.corpus, config, args.index, on_sync=on_sync, update=args.update,
        debounce=args.debounce or DEBOUNCE_S, polling=True if args.poll else None,
        poll_interval=args.poll_interval or POLL_INTERVAL_S, max_file_mb=args.max_file_mb or _max_file_mb(),
        follow_links=args.follow_links,
    )
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watcher.run(stop)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print("stopped watching", flush=True)
    return 0


def _max_file_mb() -> float:
    from indexer.corpus import MAX_FILE_MB

    return MAX_FILE_MB


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
