"""Short ``type:`` names to stage classes.

Each stage class registers itself with :func:`register`; the config loader
only ever looks names up here, it never imports a dotted path from YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import ConfigError

KINDS = ("embedder", "index", "retriever", "reranker")

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}

T = TypeVar("T", bound=type)


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` available as ``type: name`` under section ``kind``.

    The class must define a nested pydantic model ``Params``.
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {KINDS}")

    def decorator(cls: T) -> T:
        if not hasattr(cls, "Params"):
            raise TypeError(f"{cls.__name__} must define a nested Params model")
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} type {name!r} is already registered by {existing.__name__}")
        _REGISTRY[kind][name] = cls
        cls.type_name = name
        return cls

    return decorator


def lookup(kind: str, name: str) -> type:
    """Return the class registered as ``name``; a :class:`ConfigError` lists the valid names."""
    _load_builtin_stages()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise ConfigError(f"{kind}.type: unknown type {name!r}; valid choices: {valid}") from None


def names(kind: str) -> list[str]:
    """The registered type names of one kind, sorted."""
    _load_builtin_stages()
    return sorted(_REGISTRY[kind])


def _load_builtin_stages() -> None:
    # Importing the modules runs their @register decorators. The imports are
    # light: stage modules import torch and friends only when a model loads.
    import pipeline.embedders.sentence_transformer  # noqa: F401
    import pipeline.index  # noqa: F401
    import pipeline.milvus_index  # noqa: F401
    import pipeline.rerankers.cross_encoder  # noqa: F401
    import pipeline.retrievers.bm25  # noqa: F401
    import pipeline.retrievers.dense  # noqa: F401
    import pipeline.retrievers.hybrid  # noqa: F401
