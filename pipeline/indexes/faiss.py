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

from pipeline.device import check_device_name
from pipeline.errors import ConfigError, IndexMissingError, IndexWriteError
from pipeline.params import StageParams

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
# A filter matching at most this many rows is searched exactly over those rows' vectors (reconstructed
# from the index: a 20k x 1024 float32 block is 80 MB and one matrix product); more go through an ID selector.
EXACT_MAX_ROWS = 20_000


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
        path_keys = ("path",)
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
            raise IndexMissingError(
                f"index file {path} is unreadable ({exc}); rebuild with scripts/build_index.py"
            ) from None
        self._index = self._place(index)
        self._apply_search_params()

    def search(
        self, queries: np.ndarray, top_k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n_queries, k) with k = min(top_k, ntotal); ids are row numbers.

        ``rows`` (sorted row ids, a filter's matches) restricts the search to those rows, and k is then
        min(top_k, len(rows)). Up to ``EXACT_MAX_ROWS`` rows are scored exactly (their vectors
        reconstructed from the index); more go through an ID selector inside the search on the CPU
        (exact for ``Flat``, the index's own approximation for IVF/HNSW). Where neither applies (a GPU
        index, a composite factory) or an approximate index returns too few, the search over-fetches
        and keeps matching rows.
        """
        if rows is None:
            k = min(top_k, self.ntotal)
            if k == 0:
                n = len(queries)
                return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
            return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        import faiss

        rows = np.ascontiguousarray(rows, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(top_k, len(rows), self.ntotal)
        if k == 0 or len(queries) == 0:
            n = len(queries)
            return np.zeros((n, k), dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        if len(rows) >= self.ntotal:
            return self._index.search(queries, k)
        if len(rows) <= EXACT_MAX_ROWS:
            vectors = self._reconstruct(rows)
            if vectors is not None:
                scores = queries @ vectors.T
                top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                return np.take_along_axis(scores, top, axis=1), rows[top]
        if not self.on_gpu:
            selector = faiss.IDSelectorBatch(rows)  # must outlive the search: the parameters point at it
            params = self._selector_params(selector, k)
            if params is not None:
                try:
                    scores, ids = self._index.search(queries, k, params=params)
                except RuntimeError as exc:  # a factory whose search takes no selector
                    logger.debug("faiss selector not applicable (%s): over-fetching", _reason(exc))
                else:
                    short = (ids < 0).any(axis=1)
                    if not short.any():
                        return scores, ids
                    scores[short], ids[short] = self._overfetch(queries[short], k, rows)
                    return scores, ids
        return self._overfetch(queries, k, rows)

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray | None:
        """The stored vectors of ``rows`` (float32), or None when this index cannot give them back."""
        import faiss

        for attempt in range(2):
            try:
                return np.asarray(self._index.reconstruct_batch(rows), dtype=np.float32)
            except RuntimeError:
                if attempt or self.on_gpu:
                    return None
                try:  # an IVF index gives vectors back once it has a direct map (one id -> list entry table)
                    faiss.extract_index_ivf(self._index).make_direct_map()
                except RuntimeError:
                    return None
        return None

    def _selector_params(self, selector, k: int):
        """Search parameters carrying ``selector`` for this index type (keeping nprobe / efSearch), or None."""
        import faiss

        index = faiss.downcast_index(self._index)
        try:
            ivf = faiss.extract_index_ivf(self._index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(ivf.nprobe)) if ivf is index else None
        if hasattr(index, "hnsw"):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(int(index.hnsw.efSearch), k))
        if isinstance(index, (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2)):
            return faiss.SearchParameters(sel=selector)
        return None

    def _overfetch(self, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search ever deeper (by the filter's selectivity, then doubling) until k matching rows are found."""
        n = len(queries)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        depth = min(self.ntotal, max(2 * k, int(k * self.ntotal / max(len(rows), 1) * 2)))
        todo = np.arange(n)
        while len(todo):
            found_scores, found_ids = self._index.search(queries[todo], depth)
            keep = np.isin(found_ids, rows)
            left = []
            for j, q in enumerate(todo):
                hit = np.flatnonzero(keep[j])[:k]
                if len(hit) < k and depth < self.ntotal:
                    left.append(q)
                    continue
                scores[q, : len(hit)] = found_scores[j, hit]
                ids[q, : len(hit)] = found_ids[j, hit]
            if depth >= self.ntotal:
                break
            todo = np.asarray(left, dtype=np.int64)
            depth = min(self.ntotal, depth * 2)
        return scores, ids

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
