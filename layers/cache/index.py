"""FAISS vector indexes for the semantic tier: exact ``flat`` and graph ``hnsw``.

Both are inner-product indexes over L2-normalised vectors (so scores are cosine similarities)
with caller-chosen int64 ids, wrapped in ``IndexIDMap2`` so vectors can be reconstructed by id.

Removal is a tombstone: a FAISS ID selector hides removed ids from search. Tombstones are
compacted in batches, because FAISS's flat ``remove_ids`` moves the whole array and HNSW cannot
remove at all (compaction rebuilds the graph). A standalone index compacts inside ``remove``;
the cache sets ``auto_compact=False`` and rebuilds in a worker thread from ``live_vectors()``
with ``rebuilt()``, so a long HNSW rebuild never blocks the event loop. Options ``compact_min``
and ``compact_ratio`` set when: more tombstones than both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from layers.cache.base import VectorIndex

if TYPE_CHECKING:
    import numpy as np


RECONSTRUCT_CHUNK = 1000  # FAISS's reconstruct_batch is serial up to this many ids


def single_threaded_here() -> None:
    """Make FAISS calls *from the calling thread* single-threaded (OpenMP's setting is per thread).

    A flat search of one query is split over OpenMP threads; on a busy machine (a server is one)
    waiting for those threads costs far more than the split saves: measured 33 ms instead of
    1 ms at 10k entries. The cache calls this on the event-loop thread, where it searches;
    builds and compactions run in worker threads and keep every core.
    """
    import faiss

    faiss.omp_set_num_threads(1)


def deleted_path(path: str) -> str:
    """Where ``save`` keeps an index file's tombstones."""
    return f"{path}.deleted.npy"


class FaissIndex(VectorIndex):
    """Shared FAISS plumbing: id map, tombstones, dimension checks, atomic save."""

    name: ClassVar[str] = "faiss"
    compact_min: ClassVar[int] = 1024  # tombstones tolerated before compaction...
    compact_ratio: ClassVar[float] = 0.05  # ...or this share of the index, whichever is larger

    def __init__(self, dim: int, auto_compact: bool = True, **options: Any) -> None:
        self.dim = int(dim)
        self.auto_compact = auto_compact
        self.options = options
        self.compact_min = int(options.get("compact_min", type(self).compact_min))
        self.compact_ratio = float(options.get("compact_ratio", type(self).compact_ratio))
        self._deleted: set[int] = set()
        self._params: Any = None
        self._keep: list[Any] = []  # FAISS selectors referenced by self._params (kept alive)
        self._index = self._new()

    # -- what the subclasses define ---------------------------------------------------------

    def _new(self) -> Any:
        raise NotImplementedError

    def _search_params(self, selector: Any, k: int) -> Any:
        import faiss

        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _compact(self) -> None:
        """Drop tombstoned vectors for real (HNSW, which cannot remove, rebuilds instead)."""
        import numpy as np

        self._index.remove_ids(np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted)))

    def _check_loaded(self, index: Any) -> None:
        if not hasattr(index, "id_map"):
            raise ValueError(f"not a {self.name} index")

    # -- VectorIndex ------------------------------------------------------------------------

    def _vectors(self, vectors: Any) -> np.ndarray:
        import numpy as np

        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {array.shape}")
        return array

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import numpy as np

        array = self._vectors(vectors)
        keys = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(keys) != len(array):
            raise ValueError(f"{len(keys)} ids for {len(array)} vectors")
        if len(keys) == 0:
            return
        if self._deleted and not self._deleted.isdisjoint(keys.tolist()):
            self.compact()  # a tombstoned id comes back: drop the old copy first
        self._index.add_with_ids(array, keys)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        query = self._vectors(vector)
        if k <= 0 or len(self) == 0:
            return np.full(max(k, 0), -1, dtype=np.int64), np.full(max(k, 0), -np.inf, dtype=np.float32)
        selector = None
        if self._deleted:
            if not self._keep:
                self._build_selector()
            selector = self._keep[-1]
        scores, labels = self._index.search(query, k, params=self._search_params(selector, k))
        labels, scores = labels[0], scores[0]
        scores = np.where(labels < 0, -np.inf, scores).astype(np.float32)
        return labels, scores

    def remove(self, ids: np.ndarray) -> None:
        import numpy as np

        keys = [k for k in np.asarray(ids, dtype=np.int64).reshape(-1).tolist() if self._present(k)]
        if not keys:
            return
        self._deleted.update(keys)
        self._keep = []
        if self.auto_compact and self.needs_compaction():
            self.compact()

    def _present(self, key: int) -> bool:
        """Whether ``key`` is a live id (an O(1) probe of the id map; unknown ids are ignored)."""
        if key in self._deleted:
            return False
        try:
            self._index.reconstruct(key)
        except RuntimeError:
            return False
        return True

    def save(self, path: str) -> None:
        """Write atomically (temporary file, then rename), tombstones in ``<path>.deleted.npy``.

        Saving never compacts (an HNSW compaction is a rebuild): the tombstones travel with the
        file and ``load`` hides them again. The sidecar is written first, so a crash between the
        two renames leaves extra tombstones for ids the older index may not even hold (harmless).
        """
        import faiss
        import numpy as np

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        deleted = np.fromiter(sorted(self._deleted), dtype=np.int64, count=len(self._deleted))
        with open(tmp, "wb") as fh:
            np.save(fh, deleted)
        os.replace(tmp, deleted_path(path))
        faiss.write_index(self._index, tmp)
        os.replace(tmp, path)  # a crash never leaves a half-written index behind

    def load(self, path: str) -> None:
        import faiss
        import numpy as np

        index = faiss.read_index(path)
        if index.d != self.dim:
            raise ValueError(f"index at {path} has dimension {index.d}, expected {self.dim}")
        self._check_loaded(index)
        self._index = index
        self._deleted.clear()
        self._keep = []
        sidecar = deleted_path(path)
        if os.path.exists(sidecar):
            present = set(faiss.vector_to_array(index.id_map).tolist())
            self._deleted.update(i for i in np.load(sidecar).tolist() if i in present)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._deleted)

    def ids(self) -> np.ndarray:
        import faiss
        import numpy as np

        all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if not self._deleted:
            return all_ids
        deleted = np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))
        return all_ids[~np.isin(all_ids, deleted)]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        import numpy as np

        keys = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._deleted and not self._deleted.isdisjoint(keys.tolist()):
            raise KeyError("reconstruct of a removed id")
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        try:
            # FAISS goes multi-threaded (OpenMP) above 1000 ids; on a busy machine waking those
            # threads costs tens of milliseconds, copying serially in chunks costs microseconds.
            for start in range(0, len(keys), RECONSTRUCT_CHUNK):
                chunk = keys[start : start + RECONSTRUCT_CHUNK]
                out[start : start + len(chunk)] = self._index.reconstruct_batch(chunk)
        except RuntimeError as exc:  # FAISS raises on an unknown id
            raise KeyError(f"unknown id in {keys[:8].tolist()}") from exc
        return out

    # -- tombstones and compaction ----------------------------------------------------------

    @property
    def tombstones(self) -> int:
        return len(self._deleted)

    def needs_compaction(self) -> bool:
        return len(self._deleted) > max(self.compact_min, self.compact_ratio * self._index.ntotal)

    def compact(self) -> None:
        """Drop every tombstoned vector now (in the caller's thread)."""
        if self._deleted:
            self._compact()
        self._deleted.clear()
        self._keep = []

    def rebuilt(self, ids: np.ndarray, vectors: np.ndarray) -> FaissIndex:
        """A new index of the same kind and options holding exactly ``ids``/``vectors``.

        Touches no state of ``self``, so it may run in a worker thread while ``self`` serves.
        """
        fresh = type(self)(self.dim, auto_compact=self.auto_compact, **self.options)
        fresh.add(ids, vectors)
        return fresh

    def _build_selector(self) -> None:
        import faiss
        import numpy as np

        batch = faiss.IDSelectorBatch(np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted)))
        self._keep = [batch, faiss.IDSelectorNot(batch)]

    def memory_bytes(self) -> int:
        """Approximate resident size: vectors plus the id maps (``IndexIDMap2``'s hash map)."""
        return int(self._index.ntotal) * (self.dim * 4 + 8 + 40)


class FlatIndex(FaissIndex):
    """Exact search (brute force, SIMD): the reference, and the fastest to update."""

    name: ClassVar[str] = "flat"

    def _new(self) -> Any:
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _check_loaded(self, index: Any) -> None:
        import faiss

        super()._check_loaded(index)
        if not isinstance(faiss.downcast_index(index.index), faiss.IndexFlat):
            raise ValueError("not a flat index")


class HNSWIndex(FaissIndex):
    """Approximate graph search: sub-millisecond at a million entries, at some recall cost.

    Options: ``hnsw_m`` (graph degree, 32), ``ef_construction`` (80), ``ef_search`` (64; raised
    to ``k`` when more results are asked for). HNSW cannot delete, so compaction rebuilds the
    graph from the live vectors.
    """

    name: ClassVar[str] = "hnsw"
    compact_ratio: ClassVar[float] = 0.2

    @property
    def ef_search(self) -> int:
        return int(self.options.get("ef_search", 64))

    def _new(self) -> Any:
        import faiss

        inner = faiss.IndexHNSWFlat(self.dim, int(self.options.get("hnsw_m", 32)), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(self.options.get("ef_construction", 80))
        inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

    def _search_params(self, selector: Any, k: int) -> Any:
        import faiss

        # Per-call parameters: no shared attribute is written, so searches never race each other.
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        if selector is not None:
            params.sel = selector
        return params

    def _compact(self) -> None:
        live = self.ids()
        vectors = self.reconstruct(live)
        self._deleted.clear()
        self._index = self._new()
        if len(live):
            self._index.add_with_ids(vectors, live)

    def _check_loaded(self, index: Any) -> None:
        import faiss

        super()._check_loaded(index)
        if not isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat):
            raise ValueError("not an HNSW index")

    def memory_bytes(self) -> int:
        m = int(self.options.get("hnsw_m", 32))
        return super().memory_bytes() + int(self._index.ntotal) * m * 2 * 4  # level-0 links dominate
