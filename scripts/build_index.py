#!/usr/bin/env python
"""Index a corpus folder: python scripts/build_index.py CORPUS_DIR [--config FILE] [--index DIR]."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import common_parser, run, setup_logging, show_progress  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__)
    parser.add_argument("corpus", help="folder of .txt/.md/.jsonl[.gz] files, a BEIR collection, or one file")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    from indexer.build import build_index
    from pipeline.config import load_config

    config = load_config(args.config, args.overrides)
    report = build_index(args.corpus, config, args.index, show_progress=show_progress())
    m = report.manifest
    seconds = m.build_seconds
    encode = seconds.get("encode", 0.0)
    rate = m.counts["chunks"] / encode if encode > 0 else float("nan")
    print(
        f"indexed {m.counts['documents']} documents as {m.counts['chunks']} chunks "
        f"({m.embedder['model']}, {m.embedder['dimension']}-d) into {report.path}"
    )
    print(
        f"encode {encode:.1f}s ({rate:.1f} chunks/s), total "
        f"{sum(seconds.values()):.1f}s; skipped {len(report.skipped)}, unsupported files {m.counts['unsupported_files']}"
    )
    for where, why in report.skipped[:20]:
        print(f"  skipped {where}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
