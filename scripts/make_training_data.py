#!/usr/bin/env python
"""Wrapper kept for the README's commands; the command itself is commands/make_data.py."""

from _command import run

if __name__ == "__main__":
    run("make_data")
