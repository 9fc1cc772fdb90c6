#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/serve.py (console script: rag-serve)."""

from _command import run

if __name__ == "__main__":
    run("serve")
