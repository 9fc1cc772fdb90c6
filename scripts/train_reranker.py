#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/train.py (console script: rag-train)."""

from _command import run

if __name__ == "__main__":
    run("train")
