"""Short ``type:`` names to stage classes: a plain lookup table.

The table starts as :data:`pipeline.stages.BUILTIN`; :func:`register` adds a
stage of your own (``docs/architecture.md`` has a worked example). The config
loader only ever looks names up here; it never imports a dotted path from YAML.
"""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.params import RerankerParams
from pipeline.stages import BUILTIN

KINDS = ("embedder", "index", "retriever", "reranker", "generator")

_TABLE: dict[str, dict[str, type]] = {kind: dict(BUILTIN.get(kind, {})) for kind in KINDS}


def register(kind: str, name: str, cls: type) -> type:
    """Make ``cls`` available as ``type: name`` in the ``kind`` section of a config; returns ``cls``.

    The class must define a nested pydantic ``Params`` model (derived from
    :class:`pipeline.params.StageParams`) and follow :mod:`pipeline.protocols`.

    Raises:
        ValueError: unknown kind, or the name is taken by another class.
        TypeError: ``cls`` has no ``Params``.
    """
    if kind not in _TABLE:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {KINDS}")
    if not hasattr(cls, "Params"):
        raise TypeError(f"{cls.__name__} must define a nested Params model")
    if kind == "retriever" and not set(getattr(cls, "requires", ("?",))) <= {"embedder", "index"}:
        raise TypeError(f"{cls.__name__} must declare requires = a tuple of 'embedder' and/or 'index'")
    if kind == "reranker":
        _check_reranker(cls)
    existing = _TABLE[kind].get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"{kind} type {name!r} is already registered by {existing.__name__}")
    _TABLE[kind][name] = cls
    return cls


def _check_reranker(cls: type) -> None:
    """A reranker is a :class:`~pipeline.protocols.Scorer` whose ``Params`` carry the ranking settings."""
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, RerankerParams)):
        raise TypeError(f"{cls.__name__}.Params must derive from pipeline.params.RerankerParams "
                        "(top_n, weight, mix: how the pipeline ranks with its scores)")
    missing = [name for name in ("load", "score", "score_many", "skip_note", "describe") if not hasattr(cls, name)]
    if missing:
        raise TypeError(f"{cls.__name__} lacks {', '.join(missing)}: subclass pipeline.protocols.Scorer, which "
                        "gives the optional methods their defaults, and define load() and score()")


def unregister(kind: str, name: str) -> None:
    """Remove a stage added with :func:`register` (built-in stages stay)."""
    if name in BUILTIN.get(kind, {}):
        raise ValueError(f"{kind} type {name!r} is built in and cannot be removed")
    _TABLE[kind].pop(name, None)


def lookup(kind: str, name: str) -> type:
    """Return the class registered as ``name``; a :class:`ConfigError` lists the valid names."""
    try:
        return _TABLE[kind][name]
    except KeyError:
        valid = ", ".join(sorted(_TABLE[kind])) or "(none)"
        raise ConfigError(f"{kind}.type: unknown type {name!r}; valid choices: {valid}") from None


def names(kind: str) -> list[str]:
    """The registered type names of one kind, sorted."""
    return sorted(_TABLE[kind])


def classes(kind: str) -> list[type]:
    """The registered classes of one kind, in name order."""
    return [_TABLE[kind][name] for name in names(kind)]
