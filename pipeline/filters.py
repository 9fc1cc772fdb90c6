"""Metadata filters: parsed once, matched the same way by every first stage.

A filter is a set of ``KEY=VALUE`` clauses. Clauses with different keys must all
hold; several values for one key are alternatives. ``source`` and ``doc_id`` are
glob patterns (``manuals/*.pdf``; ``*`` also crosses ``/``) over the chunk's
source path (a JSONL line's ``file.jsonl:12`` matches ``file.jsonl`` too); ``page``
is a page number; every other key matches the document's metadata exactly (a list
value matches when one of its items does; numbers and booleans compare as text,
``true``/``false``).

Example:
    >>> f = Filter.parse(["source=manuals/*.pdf", "lang=zh"])
    >>> f.matches("manuals/a.pdf", {"lang": "zh"}), f.matches("notes/a.md", {"lang": "zh"})
    (True, False)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pipeline.errors import InputError

GLOB_KEYS = ("source", "doc_id")
MAX_CLAUSES = 32
MAX_VALUE_CHARS = 1000


class NoMatchError(InputError):
    """A filter that no chunk of the index matches (so there is nothing to search)."""


@dataclass(frozen=True, slots=True)
class Filter:
    """Clauses ``(key, allowed values)``, sorted by key; hashable, so results can be cached per filter."""

    clauses: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def parse(cls, items: Iterable[str]) -> Filter:
        """From ``KEY=VALUE`` strings (``ask.py --filter``, repeatable).

        Raises:
            InputError: an item without ``=`` or with an empty key.
        """
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise InputError(f"--filter {item!r}: expected KEY=VALUE, e.g. 'source=manuals/*.pdf' or 'lang=zh'")
            pairs.append((key.strip(), value.strip()))
        return cls._of(pairs)

    @classmethod
    def from_value(cls, value: Any) -> Filter | None:
        """From what an API caller sends: None or empty (no filter), a :class:`Filter`, a mapping
        ``{"source": "a/*.pdf", "lang": ["zh", "en"]}``, or a list of ``KEY=VALUE`` strings."""
        if value is None or isinstance(value, Filter):
            return value or None
        if isinstance(value, str):
            return cls.parse([value]) or None
        if isinstance(value, Mapping):
            pairs = []
            for key, wanted in value.items():
                for item in wanted if isinstance(wanted, (list, tuple)) else [wanted]:
                    if isinstance(item, (dict, list, tuple)) or item is None:
                        raise InputError(f"filter {key!r}: values must be strings, numbers or booleans, got {item!r}")
                    pairs.append((str(key), as_text(item)))
            return cls._of(pairs) or None
        if isinstance(value, (list, tuple)):
            if not all(isinstance(item, str) for item in value):
                raise InputError("a filter list holds 'KEY=VALUE' strings")
            return cls.parse(value) or None
        raise InputError(f"a filter is an object of KEY: VALUE pairs, got {type(value).__name__}")

    @classmethod
    def _of(cls, pairs: list[tuple[str, str]]) -> Filter:
        if len(pairs) > MAX_CLAUSES:
            raise InputError(f"a filter has at most {MAX_CLAUSES} clauses, got {len(pairs)}")
        values: dict[str, list[str]] = {}
        for key, value in pairs:
            if not key:
                raise InputError("a filter key is empty")
            if len(key) > MAX_VALUE_CHARS or len(value) > MAX_VALUE_CHARS:
                raise InputError(f"filter {key[:50]!r}: keys and values are at most {MAX_VALUE_CHARS} characters")
            if key == "page" and not value.isdigit():
                raise InputError(f"filter page={value!r}: a page is a positive whole number")
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
        return cls(tuple(sorted((k, tuple(v)) for k, v in values.items())))

    def __bool__(self) -> bool:
        return bool(self.clauses)

    def __str__(self) -> str:
        return " ".join(f"{key}={value}" for key, values in self.clauses for value in values)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.clauses)

    def matches(self, source: str, metadata: Mapping[str, Any], doc_id: str = "", page: int | None = None) -> bool:
        """Whether a chunk with this source, document metadata, document id and page passes every clause."""
        for key, allowed in self.clauses:
            if key == "source":
                file = source.rpartition(":")[0] if _is_line_source(source) else source
                if not any(fnmatchcase(source, p) or (file and fnmatchcase(file, p)) for p in allowed):
                    return False
            elif key == "doc_id":
                if not any(fnmatchcase(doc_id, p) for p in allowed):
                    return False
            elif key == "page":
                if page is None or str(page) not in allowed:
                    return False
            else:
                if key not in metadata:
                    return False
                have = metadata[key]
                texts = {as_text(v) for v in have} if isinstance(have, list) else {as_text(have)}
                if not texts.intersection(allowed):
                    return False
        return True


def as_text(value: Any) -> str:
    """A metadata or filter value as the text it is compared by."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _is_line_source(source: str) -> bool:
    """``file.jsonl:12``: the source of a JSONL line."""
    head, sep, tail = source.rpartition(":")
    return bool(sep and head and tail.isdigit())


def no_match(flt: Filter, n_chunks: int, metadata_keys: Iterable[str]) -> NoMatchError:
    """The message for a filter that matches no chunk of the index."""
    known = ", ".join(sorted(metadata_keys)) or "none"
    return NoMatchError(
        f"no chunk matches the filter {flt} ({n_chunks} chunks in the index). 'source' and 'doc_id' are glob "
        f"patterns over paths (e.g. source='manuals/*.pdf'), 'page' a page number; other keys match the documents' "
        f"metadata exactly (keys in this index: {known})"
    )
