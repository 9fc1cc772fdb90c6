"""Load and validate the pipeline's YAML config into typed objects, once.

The file has one section per stage (``embedder``, ``index``, ``retriever``,
``reranker``, the optional ``generator``) plus ``chunking``. A stage section names its implementation
with ``type:`` (looked up in :mod:`pipeline.registry`); its other keys are
validated by that class's ``Params`` model, so an unknown key, a wrong value
type or an unknown type fails here, with the key's path in the message.

Relative paths: one rule for every key that names a file or folder (index
paths, model folders, Ray's output): written in a config file, a relative path
is relative to that file's folder, so a config works from any working
directory; given on the command line (``--set``, ``--index``), it is relative
to the working directory, as shells expect.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from pipeline import registry
from pipeline.errors import ConfigError
from pipeline.params import StageParams

STAGE_KINDS = ("embedder", "index", "retriever", "reranker", "generator")
OPTIONAL_STAGES = ("reranker", "generator")
SECTIONS = (*STAGE_KINDS, "chunking", "context", "ray", "server", "watch")


class ChunkingParams(StageParams):
    """How documents are split before encoding.

    ``size`` and ``overlap`` count tokens of the embedder's tokenizer;
    ``size: null`` sizes chunks to the embedder's maximum length. With
    ``enabled: false`` each document is encoded whole (``title + " " + text``,
    truncated at the model's maximum length), as published benchmarks do.
    """

    enabled: bool = True
    size: PositiveInt | None = 200
    overlap: int = 40

    @model_validator(mode="after")
    def _check_overlap(self) -> ChunkingParams:
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.size is not None and self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class ContextParams(StageParams):
    """How the reranked list becomes the context handed to a generator (docs/ingestion.md).

    At most ``max_chunks_per_doc`` chunks of one document are among the final ``top_n``
    (null: no limit); a document's further chunks move behind the other documents' rather
    than being dropped, so they still fill ``top_n`` when too few documents match.
    ``merge_neighbours`` joins consecutive chunks of one document (same page) that both made
    the cut into one passage; the passage lists every chunk's position.
    """

    # Defaults chosen by measurement on five collections (docs/ingestion.md, "Context assembly"): a cap of 3
    # keeps at least two other documents in a top 5 at almost no cost in relevant text; merging lets more
    # documents in but costs more relevant text than the rule allowed, so it stays off.
    max_chunks_per_doc: PositiveInt | None = 3
    merge_neighbours: bool = False


class RayParams(StageParams):
    """How ``build_index.py --engine ray`` runs chunking and encoding (Ray Data; see docs/scale.md).

    ``address: null`` starts a local Ray on this machine for the build and stops
    it after; an address (``auto``, ``ray://head:10001``) uses that cluster,
    whose nodes must have the project installed. Encoding runs on a pool of
    model actors: one per GPU when the cluster has GPUs, otherwise one per
    ``cpus_per_actor`` CPUs (Ray gives each actor that many OpenMP threads).
    """

    path_keys = ("output", "temp_dir")

    address: str | None = None
    actors: PositiveInt | None = None
    cpus_per_actor: PositiveInt = 1
    batch_size: PositiveInt = 256
    output: str | None = None
    temp_dir: str | None = None


class ApiKeyParams(StageParams):
    """One per-collection API key of ``server.api_keys``: the key is the value of the environment variable
    ``key_env``; ``role`` ``read`` allows the query routes, ``write`` also uploads, deletes and collection
    changes, on the ``collections`` named (``["*"]``: every collection). An unset variable is no key."""

    key_env: str = Field(min_length=1)
    role: Literal["read", "write"] = "read"
    collections: tuple[str, ...] = ("*",)


class ServerParams(StageParams):
    """How ``scripts/serve.py`` serves the pipeline over HTTP (docs/serving.md).

    ``max_body_bytes`` caps a request body (413 above it), ``max_documents`` the
    documents of one rerank call (the hard limit: 413 above it; a longer list than
    one batch is served in batches of ``max_batch_pairs``), ``max_query_chars`` a
    query (422), ``max_top_k`` the candidates one request may ask for (422).
    ``cache_size`` answers of ``/v1/ask`` and ``/v1/search`` are kept for repeated
    requests, at most ``cache_mb`` megabytes of their JSON (keyed by config, index
    version and body; ``cache_size`` 0 turns the cache off).
    ``max_tokens_per_doc`` is the tokens of each document read by Cohere-shaped
    rerank calls that do not say (Cohere's default): a longer document is scored by
    windows of the model's length, up to that many tokens.
    Cross-encoder calls of concurrent requests are scored together: pairs arriving
    within ``batch_wait_ms`` of the first are batched, up to ``max_batch_pairs``;
    at most ``max_queue`` requests wait (503 with Retry-After beyond).
    ``micro_batching: false`` scores each request alone (one at a time). The API
    key is read from the environment variable named by ``api_key_env``; unset
    means no authentication.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: PositiveInt = 1_000_000
    max_documents: PositiveInt = 10_000
    max_query_chars: PositiveInt = 2000
    max_top_k: PositiveInt = 1000
    max_tokens_per_doc: PositiveInt = 4096
    cache_size: NonNegativeInt = 256  # answers of /v1/ask and /v1/search kept for repeated requests (0: off)
    cache_mb: PositiveInt = 64  # and at most this much of their JSON
    micro_batching: bool = True
    batch_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    max_batch_pairs: PositiveInt = 256
    max_queue: PositiveInt = 256
    api_key_env: str = "RAG_API_KEY"
    shutdown_timeout_s: PositiveInt = 30
    # Knowledge bases (docs/serving.md): collections the server creates live under data_dir (default: a
    # "collections" folder beside the first config's index); uploads are bounded per file, per request, and
    # in the ingestion jobs queued or running at once (429 beyond).
    data_dir: str | None = None
    max_upload_mb: float = Field(32.0, gt=0.0)
    max_upload_files: PositiveInt = 20
    max_jobs: PositiveInt = 8
    api_keys: tuple[ApiKeyParams, ...] = ()  # per-collection keys, each read from an environment variable

    path_keys: ClassVar[tuple[str, ...]] = ("data_dir",)


class WatchParams(StageParams):
    """A folder the served collection of this config's index keeps in sync (``rag-serve``; docs/ingestion.md):
    added, changed, removed and renamed files become ingestion jobs, debounced; ``polling`` (None: the
    ``RAG_WATCH_POLL`` environment variable) polls every ``poll_interval`` seconds instead of OS events."""

    folder: str = Field(min_length=1)
    debounce: float = Field(1.0, gt=0.0)
    polling: bool | None = None
    poll_interval: float = Field(1.0, gt=0.0)

    path_keys: ClassVar[tuple[str, ...]] = ("folder",)


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One validated stage section: its kind, registered type and params."""

    kind: str
    type: str
    params: Any  # the stage class's Params instance

    @property
    def cls(self) -> type:
        return registry.lookup(self.kind, self.type)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.params.model_dump()}


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The whole validated config. ``reranker`` is None when disabled; ``generator`` unless configured."""

    embedder: StageConfig
    index: StageConfig
    retriever: StageConfig
    reranker: StageConfig | None
    chunking: ChunkingParams
    source: str = "<dict>"
    ray: RayParams = RayParams()
    server: ServerParams = ServerParams()
    generator: StageConfig | None = None
    context: ContextParams = ContextParams()
    watch: WatchParams | None = None  # a folder the server keeps this config's index in sync with

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {kind: getattr(self, kind).to_dict() for kind in ("embedder", "index", "retriever")}
        out["reranker"] = self.reranker.to_dict() if self.reranker else {"enabled": False}
        if self.generator is not None:
            out["generator"] = self.generator.to_dict()
        out["chunking"] = self.chunking.model_dump()
        if self.context != ContextParams():  # left out when default
            out["context"] = self.context.model_dump()
        if self.ray != RayParams():  # only build-time settings; left out when default
            out["ray"] = self.ray.model_dump()
        if self.server != ServerParams():  # only serving settings; left out when default
            out["server"] = self.server.model_dump()
        if self.watch is not None:
            out["watch"] = self.watch.model_dump()
        return out


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a YAML file, apply ``key.path=value`` overrides, validate.

    Example:
        >>> cfg = load_config("configs/offline.yaml", ["reranker.enabled=false"])
        >>> cfg.reranker is None
        True
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    resolve_paths(raw, path.resolve().parent)
    for override in overrides:
        apply_override(raw, override)
    return parse_config(raw, source=str(path))


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a config file absolute against its folder ``base``, in place.

    The keys are those each section's ``Params`` names in ``path_keys`` and ``model_keys``
    (a model key is rewritten only when it looks like a path, ``./x`` or ``../x``, or names
    an existing folder there; otherwise it stays a hub id). Paths given on the command line
    (``--set``, ``--index``) are not touched: they are relative to the working directory.
    """
    for section, params in _section_params(raw):
        values = raw[section]
        for key in (*params.path_keys, *params.model_keys):
            value = values.get(key)
            if not isinstance(value, str) or not value or _is_absolute_or_remote(value):
                continue
            candidate = base / value
            if key in params.path_keys or value.startswith(("./", "../")) or candidate.is_dir():
                values[key] = os.path.normpath(candidate)


def _section_params(raw: Mapping[str, Any]):
    """(section name, Params class) of each section of ``raw`` whose class is known."""
    for section, value in raw.items():
        if not isinstance(value, dict):
            continue
        if section == "ray":
            yield section, RayParams
        elif section == "server":
            yield section, ServerParams
        elif section == "watch":
            yield section, WatchParams
        elif section in STAGE_KINDS and isinstance(value.get("type"), str):
            try:
                yield section, registry.lookup(section, value["type"]).Params
            except ConfigError:
                continue  # reported with the other validation errors


def _is_absolute_or_remote(value: str) -> bool:
    return (
        value.startswith(("~", "bundled:"))
        or Path(value).is_absolute()
        or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None
    )


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a raw config dict; the value is parsed as YAML (``false``, ``10``, ``null``)."""
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (for example reranker.enabled=false), got {override!r}")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {exc}") from None


def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validate a raw config mapping (as read from YAML) into a :class:`PipelineConfig`."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(SECTIONS)}")
    stages: dict[str, StageConfig | None] = {}
    for kind in STAGE_KINDS:
        stages[kind] = _parse_stage(kind, raw.get(kind), source)
    chunking = validate_params(ChunkingParams, raw.get("chunking") or {}, "chunking", source)
    ray = validate_params(RayParams, raw.get("ray") or {}, "ray", source)
    server = validate_params(ServerParams, raw.get("server") or {}, "server", source)
    context = validate_params(ContextParams, raw.get("context") or {}, "context", source)
    watch = validate_params(WatchParams, raw["watch"], "watch", source) if raw.get("watch") else None
    retriever, reranker = stages["retriever"], stages["reranker"]
    top_k = retriever.params.top_k
    if reranker is not None and reranker.params.top_n > top_k:
        raise ConfigError(
            f"{source}: reranker.top_n ({reranker.params.top_n}) is larger than retriever.top_k ({top_k}); "
            "the reranker can only keep candidates it was given"
        )
    return PipelineConfig(
        embedder=stages["embedder"],
        index=stages["index"],
        retriever=retriever,
        reranker=reranker,
        chunking=chunking,
        source=source,
        ray=ray,
        server=server,
        generator=stages["generator"],
        context=context,
        watch=watch,
    )


def _parse_stage(kind: str, section: Any, source: str) -> StageConfig | None:
    if section is None or section is False:
        if kind in OPTIONAL_STAGES:
            return None
        raise ConfigError(f"{source}: missing section '{kind}' (with a 'type:' key)")
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: '{kind}' must be a mapping, got {type(section).__name__} {section!r}")
    section = dict(section)
    enabled = section.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{source}: {kind}.enabled must be true or false, got {enabled!r}")
    if not enabled:
        if kind not in OPTIONAL_STAGES:
            raise ConfigError(f"{source}: {kind} cannot be disabled; only {', '.join(OPTIONAL_STAGES)} can")
        return None
    type_name = section.pop("type", None)
    if type_name is None:
        valid = ", ".join(registry.names(kind))
        raise ConfigError(f"{source}: missing key '{kind}.type'; valid choices: {valid}")
    if not isinstance(type_name, str):
        raise ConfigError(f"{source}: {kind}.type must be a string, got {type_name!r}")
    cls = registry.lookup(kind, type_name)
    params = validate_params(cls.Params, section, kind, source)
    return StageConfig(kind=kind, type=type_name, params=params)


def validate_params(model: type[BaseModel], data: Any, prefix: str, source: str = "<dict>") -> Any:
    """Validate ``data`` with a pydantic model; errors become one :class:`ConfigError` naming each key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix}' must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(err, model, prefix) for err in exc.errors())) from None


def _describe(err: Mapping[str, Any], model: type[BaseModel], prefix: str) -> str:
    loc = ".".join(str(p) for p in (prefix, *err["loc"]))
    if err["type"] == "extra_forbidden":
        head = prefix.split(".")[0]
        extra = ["type", *(["enabled"] if head in OPTIONAL_STAGES else [])] if head in STAGE_KINDS else []
        valid = ", ".join([*model.model_fields, *extra])
        return f"unknown key '{loc}'; valid keys: {valid}"
    if err["type"] == "literal_error":
        return f"{loc}: {err['msg']}, got {err.get('input')!r}"
    message = err["msg"].removeprefix("Value error, ")
    if err["loc"]:
        return f"{loc}: {message} (got {err.get('input')!r})"
    return f"{loc}: {message}"
