"""The neighbourhood memory of Layer 2: one row per rewarded request (its MiniLM vector and, per
model, the decayed reward sums), searched by cosine similarity.

Rows ``[0, built)`` live in a FAISS IVF index with 8-bit scalar-quantised vectors (``IVF-SQ8``),
added in chunks of ``chunk`` rows; rows ``[built, n)`` (fewer than ``chunk``) sit in a flat
float32 index searched exactly. The IVF's coarse centroids and quantiser ranges are trained (fixed
seed, one thread) over the rows held when the memory first reaches ``FIRST_TRAIN`` rows (64 lists)
and again at ``SECOND_TRAIN`` (512 lists, every row re-added), so the index depends only on the
order rows were added: a rebuild from the same events finds the same neighbours. Past
``max_rows`` the oldest quarter of the rows is dropped and the index rebuilt from the rest (the
same rule live and on rebuild). Searches run on one FAISS thread, off BLAS, which matters on a
loaded machine where a threaded gemv can take milliseconds.

Memory per row: the vector twice (float16 here, for retraining and compaction: ``2·dim`` bytes;
8-bit codes and an id in the index: ``dim + 8``), the float32 sums (``8·slots``) and the
request-id map (~100 bytes): 384 dims and 40 models ≈ 1.6 KB a row, so the default ``max_rows``
(200,000) bounds it near 320 MB whatever the number of rewards (``ops/bench/bandit.py --neighbourhood``
measures it at 1M remembered rewards).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# The IVF is first trained (64 lists) when the memory holds this many rows, and retrained (512 lists)
# at the second count; until the first, every row is searched exactly.
FIRST_TRAIN = 4096
SECOND_TRAIN = 32768


def _faiss() -> Any:
    global _FAISS
    if _FAISS is None:
        import faiss

        _FAISS = faiss
    return _FAISS


_FAISS: Any = None


class NeighbourMemory:
    """Rows of (vector, per-slot reward sums); ``search`` returns (rows, similarities)."""

    def __init__(self, dim: int, max_rows: int, chunk: int = 512, nprobe: int = 8) -> None:
        self.dim = dim
        self.max_rows = max(int(max_rows), 2 * FIRST_TRAIN)
        self.chunk = int(chunk)
        self.nprobe = int(nprobe)
        self.reset()

    def reset(self) -> None:
        self.vec = np.zeros((0, self.dim), dtype=np.float16)
        self._set_sums(np.zeros((0, 0), dtype=np.float32))
        self.n = 0
        self.built = 0
        self.index: Any = None
        self.quantizer: Any = None
        self.nlist = 0
        self.tail: Any = None
        self.tail_n = 0
        self.rows_by_request: dict[str, int] = {}
        self.request_of: list[str] = []

    # ---- rows ------------------------------------------------------------------------------

    def _set_sums(self, sums: np.ndarray) -> None:
        """One (rows, 2·slots) array: ``sa`` and ``sb`` are its halves (views), so a search
        gathers both with one ``take``."""
        self.sums = sums
        width = sums.shape[1] // 2
        self.sa, self.sb = sums[:, :width], sums[:, width:]

    def _reserve(self, rows: int, slots: int) -> None:
        cap, width = self.vec.shape[0], self.sa.shape[1]
        if rows > cap:
            new = min(max(rows, 2 * cap, 1024), self.max_rows)
            self.vec = np.concatenate([self.vec, np.zeros((new - cap, self.dim), np.float16)])
            self._set_sums(np.concatenate([self.sums, np.zeros((new - cap, 2 * width), np.float32)]))
        if slots > width:
            sums = np.zeros((self.sums.shape[0], 2 * slots), np.float32)
            sums[:, :width] = self.sa
            sums[:, slots : slots + width] = self.sb
            self._set_sums(sums)

    def row(self, request_id: str, vector: np.ndarray, slots: int) -> int:
        """The row of ``request_id``, appended (with ``vector``) if new."""
        found = self.rows_by_request.get(request_id)
        if found is not None:
            self._reserve(self.n, slots)
            return found
        if self.n >= self.max_rows:
            self._compact()
        self._reserve(self.n + 1, slots)
        r = self.n
        self.vec[r] = vector
        self.n += 1
        self.rows_by_request[request_id] = r
        self.request_of.append(request_id)
        if self.n - self.built >= self.chunk and self.n >= FIRST_TRAIN:
            self._add_chunk()
        return r

    def add(self, row: int, slot: int, a: float, b: float) -> None:
        self.sa[row, slot] += a
        self.sb[row, slot] += b

    def scale(self, factor: float) -> None:
        self.sums[: self.n] *= factor

    def _compact(self) -> None:
        """Drop the oldest quarter of the rows and rebuild the graph from the rest."""
        drop = self.max_rows // 4
        keep = slice(drop, self.n)
        vec, sums = self.vec[keep].copy(), self.sums[keep].copy()
        ids = self.request_of[drop : self.n]
        self.reset()
        self.vec = vec
        self._set_sums(sums)
        self.n = len(ids)
        self.request_of = ids
        self.rows_by_request = {rid: i for i, rid in enumerate(ids)}
        while self.n - self.built >= self.chunk and self.n >= FIRST_TRAIN:
            self._add_chunk(min(self.n, max(FIRST_TRAIN, self.built + self.chunk)))

    def _add_chunk(self, end: int | None = None) -> None:
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one thread: the index depends on the add order only
        try:
            end = self.n if end is None else end
            lists = 512 if end >= SECOND_TRAIN else 64
            if self.index is None or (lists > self.nlist):
                quantizer = faiss.IndexFlatIP(self.dim)
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, self.dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                )
                index.cp.seed = 1234
                index.cp.niter = 10
                index.train(self._f32(0, end))
                index.add(self._f32(0, end))
                self.index, self.quantizer, self.nlist = index, quantizer, lists
            else:
                self.index.add(self._f32(self.built, end))
            self.index.nprobe = min(self.nprobe, self.nlist)
        finally:
            faiss.omp_set_num_threads(threads)
        self.built = end
        self.tail = None

    def _f32(self, start: int, end: int) -> np.ndarray:
        return np.ascontiguousarray(self.vec[start:end], dtype=np.float32)

    # ---- search ----------------------------------------------------------------------------

    def _tail_index(self) -> Any:
        import faiss

        if self.tail is None:
            self.tail = faiss.IndexFlatIP(self.dim)
            self.tail_n = self.built
        if self.tail_n < self.n:
            self.tail.add(self._f32(self.tail_n, self.n))
            self.tail_n = self.n
        return self.tail

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` nearest rows (IVF over the indexed rows, exact over the tail), best first.

        With both parts present the rows come in ``argpartition`` order of the tail's hits
        followed by the IVF's (callers sum over them in this order, so it is kept as it is)."""
        if self.n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        faiss = _faiss()
        if faiss.omp_get_max_threads() != 1:
            faiss.omp_set_num_threads(1)  # single queries: threads only add overhead
        q = np.ascontiguousarray(query, dtype=np.float32)
        parts = [self._tail_index()] if self.n > self.built else []
        if self.index is not None:
            parts.append(self.index)
        # both parts' hits side by side in one buffer: the tail's (rows offset by ``built``), the IVF's
        sims = np.empty(len(parts) * k, np.float32)
        ids = np.empty(len(parts) * k, np.int64)
        ptr = faiss.swig_ptr
        for p, index in enumerate(parts):
            index.search_c(1, ptr(q), k, ptr(sims[p * k :]), ptr(ids[p * k :]), None)
        return self._merge(ids, sims, k)

    def _merge(self, ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the parts' hits side by side (the tail's first, its rows offset here)."""
        keep = (ids >= 0) if ids[k - 1] < 0 or ids[-1] < 0 else None  # fewer than k hits: id -1
        if self.n > self.built:
            ids[:k] += self.built
        if keep is not None:
            ids, sims = ids[keep], sims[keep]
        if len(ids) > k:
            top = np.argpartition(-sims, k - 1)[:k]
            ids, sims = ids.take(top), sims.take(top)
        return ids, sims

    def search_many(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``search`` for each row of ``queries`` with one FAISS call per part (a rebuild's
        residuals), the same rows, similarities and order as one ``search`` per query: FAISS's
        BLAS path for large batches is off meanwhile, so every dot product is the one-query one;
        the queries run on every core (each query's result does not depend on the others)."""
        if self.n == 0 or len(queries) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
        faiss = _faiss()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        parts = [self._tail_index()] if self.n > self.built else []
        if self.index is not None:
            parts.append(self.index)
        threshold = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1 << 30
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # queries are independent: same results
        try:
            found = [index.search(q, k) for index in parts]
        finally:
            faiss.cvar.distance_compute_blas_threshold = threshold
            faiss.omp_set_num_threads(1)
        out = []
        for i in range(len(q)):
            sims = np.concatenate([f[0][i] for f in found]).astype(np.float32)
            ids = np.concatenate([f[1][i] for f in found]).astype(np.int64)
            out.append(self._merge(ids, sims, k))
        return out

    def nbytes(self) -> int:
        held = 0 if self.index is None else self.index.ntotal * (self.dim + 8) + self.nlist * 4 * self.dim
        tail = 0 if self.tail is None else self.tail.ntotal * 4 * self.dim
        ids = 100 * len(self.request_of)  # dict entry + list slot + the id string, roughly
        return int(self.vec.nbytes + self.sums.nbytes + held + tail + ids)
