"""Document readers, one module per format, looked up by file extension.

Adding a format is one module here (``NAME``, ``SUFFIXES``, ``VERSION``, ``LIBRARY``,
``read(file)``; see :mod:`indexer.readers.base`) plus its name in ``MODULES``. The
format libraries are imported only when a file of that format is read, so a missing
optional library costs only those files (each skipped with the install hint).
"""

from __future__ import annotations

from types import ModuleType

from indexer.readers import docx, html, jsonl, markdown, pdf, text
from indexer.readers.base import FileInput, SkipFile

MODULES: tuple[ModuleType, ...] = (text, markdown, jsonl, pdf, html, docx)

READERS: dict[str, ModuleType] = {suffix: module for module in MODULES for suffix in module.SUFFIXES}

__all__ = ["MODULES", "READERS", "FileInput", "SkipFile", "reader_for", "suffix_of"]


def reader_for(name: str) -> ModuleType | None:
    """The reader for a file name (longest matching suffix, case-insensitive), or None."""
    lower = name.lower()
    best = None
    for suffix, module in READERS.items():
        if lower.endswith(suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, module)
    return best[1] if best else None


def suffix_of(name: str) -> str:
    """The extension a summary counts a file under: ``.pdf``, ``.jsonl.gz``, or ``(none)``."""
    lower = name.lower().rpartition("/")[2]
    for suffix in sorted(READERS, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    dot = lower.rfind(".")
    return lower[dot:] if dot > 0 else "(none)"
