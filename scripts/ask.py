#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/ask.py (console script: rag-ask)."""

from _command import run

if __name__ == "__main__":
    run("ask")
