"""FAISS vector index stage (``index.type: faiss``): inner product over normalized vectors = cosine.

The index is exact (``Flat``) by default; any FAISS factory string works
(``HNSW32``, ``IVF1024,Flat``, ...). With ``device: auto`` and a faiss build
that has GPU support, the index is moved to the GPU for building and search,
and moved back to the CPU to be written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, PositiveInt

from pipeline.params import StageParams
from pipeline.device import check_device_name
from pipeline.errors import ConfigError, IndexMissingError, IndexWriteError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"


def _training_points(index) -> int:
    """How many vectors an untrained index needs to train: one per inverted list (IVF); 1 otherwise."""
    import faiss

    if index.is_trained:
        return 0
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:  # not an IVF index
        return 1


def _reason(exc: RuntimeError) -> str:
    """The readable tail of a faiss error (its message starts with the C++ function and source line)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.rpartition("failed: ")[2] or text


def faiss_gpu_count() -> int:
    """Number of GPUs faiss can use (0 on a faiss-cpu build)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


class FaissIndex:
    """A FAISS index over float32 (n, dim) vectors, searched by inner product."""

    class Params(StageParams):
        path: str = "indexes/default"
        factory: str = "Flat"
        device: Annotated[str, AfterValidator(check_device_name)] = "auto"
        nprobe: PositiveInt | None = None
        ef_search: PositiveInt | None = None

    def __init__(self, params: Params) -> None:
        self.params = params
        self._index = None
        self._gpu_resources = None

    @property
    def on_gpu(self) -> bool:
        return self._gpu_resources is not None

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @staticmethod
    def release_version(version: Path) -> None:
        """Nothing to free: a FAISS index lives inside its version folder."""

    def describe(self) -> dict:
        """What the index depends on (for the manifest and the evaluation cache key)."""
        return {"factory": self.params.factory}

    def build(self, vectors: np.ndarray, chunks=None) -> None:
        """Create the index from scratch and add ``vectors`` (row i gets id i); the chunk store keeps ``chunks``."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        try:
            index = faiss.index_factory(vectors.shape[1], self.params.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"index.factory: FAISS cannot build {self.params.factory!r}: {exc}") from None
        needed = _training_points(index)
        if not index.is_trained and len(vectors) < needed:
            raise ConfigError(
                f"index.factory {self.params.factory!r} needs at least {needed} vectors to train, but there are "
                f"{len(vectors)} chunks; use fewer lists (e.g. 'IVF{max(len(vectors) // 39, 1)},Flat') or 'Flat'"
            )
        index = self._place(index)
        if not index.is_trained:
            try:
                index.train(vectors)
            except RuntimeError as exc:
                raise ConfigError(
                    f"index.factory {self.params.factory!r} cannot be trained on {len(vectors)} vectors "
                    f"({_reason(exc)}); use a smaller factory or 'Flat'"
                ) from None
        index.add(vectors)
        self._index = index
        self._apply_search_params()

    def save(self, directory: Path) -> None:
        import faiss

        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        try:
            faiss.write_index(index, str(directory / INDEX_FILE))
        except RuntimeError as exc:  # faiss reports a failed write (disk full, file too large) this way
            raise IndexWriteError(
                f"cannot write the FAISS index to {directory / INDEX_FILE} (is the disk full? "
                f"{_reason(exc)})"
            ) from None

    def load(self, directory: Path) -> None:
        import faiss

        path = directory / INDEX_FILE
        if not path.is_file():
            raise IndexMissingError(f"index file {path} is missing; rebuild with scripts/build_index.py")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexMissingError(f"index file {path} is unreadable ({exc}); rebuild with scripts/build_index.py") from None
        self._index = self._place(index)
        self._apply_search_params()

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n_queries, k) with k = min(top_k, ntotal); ids are row numbers."""
        k = min(top_k, self.ntotal)
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def _place(self, index):
        """Move the index to the GPU when asked for (or ``auto``) and faiss can."""
        import faiss

        wanted = self.params.device
        gpus = faiss_gpu_count()
        if wanted.startswith("cuda") and gpus == 0:
            raise ConfigError(
                f"index.device is {wanted!r} but this faiss build has no GPU support or sees no GPU; "
                "use 'auto' or 'cpu' (or install the faiss GPU build: see README)"
            )
        if wanted == "cpu" or (wanted == "auto" and gpus == 0):
            return index
        gpu_id = int(wanted.partition(":")[2] or 0)
        self._gpu_resources = faiss.StandardGpuResources()
        logger.info("faiss index placed on GPU %d", gpu_id)
        return faiss.index_cpu_to_gpu(self._gpu_resources, gpu_id, index)

    def _apply_search_params(self) -> None:
        import faiss

        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        for key, name in (("nprobe", "nprobe"), ("ef_search", "efSearch")):
            value = getattr(self.params, key)
            if value is None:
                continue
            try:
                space.set_index_parameter(self._index, name, value)
            except RuntimeError:
                raise ConfigError(
                    f"index.{key} does not apply to index.factory {self.params.factory!r}; remove it"
                ) from None
