#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/serve.py (console script: rag-serve)."""

import sys

try:
    from commands.serve import cli
except ModuleNotFoundError as exc:  # run outside the project's environment
    sys.exit(f"error: cannot import '{exc.name}': the project is not installed in this Python ({sys.executable}). "
             "Run 'make setup' and use .venv/bin/python, or install it with: pip install -e .")

if __name__ == "__main__":
    cli()
