"""What the scripts share: common flags, logging set-up, and errors turned into exit codes.

Scripts stay thin: parse arguments, call the API, print, return an exit code.
A :class:`RagError` is printed as one line on stderr (with its traceback only
under ``--debug``). Anything else is a bug: it is printed as one line too, with
exit code 1 and a hint to rerun with ``--debug`` for the traceback. A reader that
closes stdout early (``| head``) is not an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import RagError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "offline.yaml"


def common_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config``, ``--index``, ``--set``, ``-v`` and ``--debug``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        default=os.environ.get("RAG_CONFIG", str(DEFAULT_CONFIG)),
        help="pipeline YAML (default: $RAG_CONFIG or configs/offline.yaml)",
    )
    parser.add_argument("--index", default=None, help="index folder (default: the config's index.path)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set reranker.enabled=false --set retriever.top_k=20",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for progress logs, -vv for debug")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    return parser


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main`` and map expected errors to exit codes (2 usage/config, 3 missing index/model/data)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except RagError as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: what no specific handler foresaw
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)}; run with --debug for details",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, printable whatever the terminal's encoding."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Library download/loading bars are noise in a CLI; our own bars stay on.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def show_progress() -> bool:
    return sys.stderr.isatty()
