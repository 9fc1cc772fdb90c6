"""Serve the pipeline over HTTP: python scripts/serve.py [--config [NAME=]FILE ...] [--index DIR] [--host H] [--port P].

Loads the models and the index once, then answers /v1/ask, /v1/rerank, /v1/search and
the web page at / (docs/serving.md). Several --config flags serve several named
pipelines (name: the file's stem, or NAME=FILE); requests pick one with "config",
the first is the default. Server settings come from the first config's "server:"
section; --host and --port override it. SIGTERM finishes in-flight requests, then exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from commands.common import DEFAULT_CONFIG, run, setup_logging
from pipeline.errors import ConfigError, InputError


def parse_named(specs: list[str]) -> dict[str, str]:
    """``[NAME=]PATH`` specs -> {name: path}, names from file stems when not given; names must differ."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise InputError(f"--config expects FILE or NAME=FILE, got {spec!r}")
        if name in named:
            raise InputError(f"two configs are named {name!r}; name them with --config NAME=FILE")
        named[name] = path
    return named


def main(argv=None) -> int:
    # common_parser's flags, with --config repeatable
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", action="append", default=None, metavar="[NAME=]FILE",
        help="pipeline YAML, repeatable (default: $RAG_CONFIG or configs/offline.yaml)",
    )
    parser.add_argument("--index", default=None,
                        help="index folder for every config (default: each config's index.path)")
    parser.add_argument("--host", default=None, help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: server.port, 8000; 0 picks a free one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in every config, e.g. --set server.micro_batching=false")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-vv for debug logs and the access log")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    args = parser.parse_args(argv)
    setup_logging(max(args.verbose, 1))

    import uvicorn

    from pipeline.config import load_config
    from server import create_app

    specs = args.config or [os.environ.get("RAG_CONFIG", str(DEFAULT_CONFIG))]
    configs = {name: load_config(path, args.overrides) for name, path in parse_named(specs).items()}
    settings = next(iter(configs.values())).server
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if updates:
        try:
            settings = settings.model_validate({**settings.model_dump(), **updates})
        except ValueError as exc:
            raise ConfigError(f"--host/--port: {exc}") from None
    index_paths = {name: args.index for name in configs} if args.index else None
    app = create_app(configs, index_paths, settings=settings)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info" if args.verbose <= 1 else "debug",
        timeout_graceful_shutdown=settings.shutdown_timeout_s, access_log=args.verbose > 1,
    ))
    server.run()
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
