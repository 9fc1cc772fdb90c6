"""Evaluation indexes, built once and reused: keyed by corpus content + embedder + chunking.

Two configs that agree on what goes into the vectors (the corpus, the
embedder's model and document settings, the chunking and the vector index settings)
share one index, so an ablation of retrievers and rerankers encodes the
corpus once, and a second run of the same collection encodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import IndexMissingError

logger = logging.getLogger(__name__)

KEY_VERSION = 1


def index_key(config: PipelineConfig, corpus_sha256: str) -> dict[str, Any]:
    """The settings an index's content depends on; equal keys mean interchangeable indexes."""
    embedder = config.embedder.params
    return {
        "key_version": KEY_VERSION,
        "corpus_sha256": corpus_sha256,
        "embedder": {
            "type": config.embedder.type,
            "model": embedder.model,
            "normalize": embedder.normalize,
            "max_length": embedder.max_length,
            "document_prompt": embedder.document_prompt,
        },
        "chunking": config.chunking.model_dump(),
        "index": {"type": config.index.type, **config.index.cls(config.index.params).describe()},
    }


def index_digest(key: dict[str, Any]) -> str:
    """A short stable hash of :func:`index_key` (12 hex digits), used as the folder name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def cached_index_path(cache_dir: Path, collection: str, key: dict[str, Any]) -> Path:
    """Where the index for ``key`` lives under ``cache_dir`` (``indexes/<collection>-<digest>``)."""
    return Path(cache_dir) / "indexes" / f"{collection}-{index_digest(key)}"


def ensure_index(
    corpus_path: Path, config: PipelineConfig, index_path: Path, key: dict[str, Any], *, show_progress: bool = False,
    engine: str = "local",
) -> tuple[Path, float]:
    """Build the index at ``index_path`` unless a finished one with the same key is there.

    ``engine`` builds it in this process (``local``) or on Ray (``ray``); the vectors are the same
    within float rounding, so the engine is not part of the key.

    Returns:
        The index path and the seconds spent building it (0.0 when reused).
    """
    from indexer.build import build_index
    from pipeline.store import Manifest, current_version

    key_file = index_path / "eval-key.json"
    try:
        version = current_version(index_path)
        stored = json.loads(key_file.read_text(encoding="utf-8"))
        if stored == key and Manifest.read(version).corpus.get("sha256") == key["corpus_sha256"]:
            logger.info("reusing index %s", index_path)
            return index_path, 0.0
        logger.info("index %s has another key; rebuilding", index_path)
    except (IndexMissingError, FileNotFoundError, ValueError):
        pass
    logger.info("building index %s (%s, chunking %s)", index_path, key["embedder"]["model"], key["chunking"])
    sibling = _same_vectors(index_path, key)
    report = build_index(corpus_path, config, index_path, show_progress=show_progress, reuse_from=sibling,
                         engine=engine)
    key_file.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return index_path, float(sum(report.manifest.build_seconds.values()))


def _same_vectors(index_path: Path, key: dict[str, Any]) -> Path | None:
    """A cached index of the same collection with the same vectors in another store (only ``index`` differs).

    Its vectors are reused, so comparing stores (FAISS vs Milvus) encodes the corpus once.
    """
    want = {k: v for k, v in key.items() if k != "index"}
    for key_file in sorted(index_path.parent.glob("*/eval-key.json")):
        if key_file.parent == index_path:
            continue
        try:
            stored = json.loads(key_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if {k: v for k, v in stored.items() if k != "index"} == want:
            return key_file.parent
    return None
