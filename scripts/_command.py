"""What every script in this folder does: run one command of the installed project, or say how to install it."""

import importlib
import sys


def run(name: str) -> None:
    """Run ``commands.<name>.cli()``; outside the project's environment, one line on how to set it up."""
    try:
        module = importlib.import_module(f"commands.{name}")
    except ModuleNotFoundError as exc:
        sys.exit(f"error: cannot import '{exc.name}': the project is not installed in this Python ({sys.executable}). "
                 "Run 'make setup' and use .venv/bin/python, or install it with: pip install -e .")
    module.cli()
