#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/build.py (console script: rag-build)."""

from _command import run

if __name__ == "__main__":
    run("build")
