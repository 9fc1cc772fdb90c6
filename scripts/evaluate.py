#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/evaluate.py (console script: rag-eval)."""

from _command import run

if __name__ == "__main__":
    run("evaluate")
