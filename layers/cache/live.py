"""The semantic cache's FAISS index at run time: load-or-rebuild, writes, background compaction, saves.

Every method except the worker-thread parts runs on the event loop thread; callers that mutate
hold the cache's writer lock. Searches read ``LiveIndex.index`` directly without the lock: reads
and writes never overlap because both happen on the loop thread, and the only index work done in
threads (``live_vectors``, ``save``) is read-only and runs while the lock keeps writers out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from layers.cache.base import VectorIndex, build_index

if TYPE_CHECKING:
    import numpy as np

    from layers.cache.stores import CacheStore

log = logging.getLogger("compass.cache")
SpawnFn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class LiveIndex:
    def __init__(
        self, kind: str, dim: int, options: dict[str, Any], path: str | None, lock: asyncio.Lock
    ) -> None:
        self.kind = kind
        self.dim = dim
        self.options = options
        self.path = path
        self.lock = lock
        self.index: VectorIndex = self.new()
        self.source = "empty"  # "file" | "rebuilt" | "empty"
        self.note: str | None = None  # why the file was not used
        self.dirty = False  # the index differs from the file
        self.rebuilding: asyncio.Task[None] | None = None
        self._log: list[tuple[str, Any, Any]] | None = None  # writes made during a rebuild

    def new(self) -> VectorIndex:
        return build_index(self.kind, self.dim, auto_compact=False, **self.options)

    # -- start ---------------------------------------------------------------------------------

    async def load_or_rebuild(self, db: CacheStore, stored: np.ndarray) -> None:
        """Use the file if it agrees with the stored entries (``stored`` vector ids), else rebuild.

        A file saved before the last writes (a crash, a kill) is caught up rather than rebuilt:
        entries stored since are added from the table, entries deleted since are tombstoned. Only
        an unreadable or foreign file (another kind, dimension, or vectors that differ from the
        table) is rebuilt from the stored vectors, which an HNSW index pays for in build time.
        """
        if self.path and os.path.exists(self.path):
            candidate = self.new()
            try:
                await asyncio.to_thread(candidate.load, self.path)
                problem = await self._reconcile(db, candidate, stored)
            except Exception as exc:  # unreadable, another kind or dimension: rebuild
                problem = f"unreadable: {type(exc).__name__}: {exc}"
            if problem is None:
                self.index, self.source = candidate, "file"
                self.dirty = self.dirty or candidate.tombstones > 0
                return
            self.note = problem
        else:
            self.note = "no index file" if self.path else "in memory"
        ids, vectors = await db.load_vectors(None, self.dim)
        self.index = await asyncio.to_thread(self.new().rebuilt, ids, vectors)
        self.source = "rebuilt"
        self.dirty = bool(self.path)
        if self.path and len(ids):
            log.warning("cache index rebuilt from %d stored vectors (%s)", len(ids), self.note)

    async def _reconcile(self, db: CacheStore, index: VectorIndex, stored: np.ndarray) -> str | None:
        """Bring a loaded index in line with the table; why it cannot be used, or None.

        Vector ids are never reused (the high-water mark is persisted), so an id present in both
        names the same vector; a sample is still compared with the table to catch a foreign file.
        """
        import numpy as np

        present = index.ids()
        common = np.intersect1d(stored, present)
        if len(common):
            sample = common[np.linspace(0, len(common) - 1, num=min(16, len(common))).astype(int)]
            _, expected = await db.load_vectors(sample.tolist(), self.dim)
            if not np.allclose(index.reconstruct(sample), expected, atol=1e-5):
                return "vectors in the file differ from the stored ones"
        elif len(present) and len(stored):
            return "the file shares no entry with the table"
        index.remove(np.setdiff1d(present, stored))
        missing = np.setdiff1d(stored, present)
        if len(missing):
            ids, vectors = await db.load_vectors(missing.tolist(), self.dim)
            await asyncio.to_thread(index.add, ids, vectors)
            self.note = f"caught up: {len(missing)} entries stored after the file was saved"
            self.dirty = True
            log.info("cache index file %s", self.note)
        else:
            self.note = None
        return None

    # -- writes (caller holds the lock) -----------------------------------------------------------

    def add(self, vector_id: int, vector: np.ndarray) -> None:
        self._apply("add", [vector_id], vector)

    def remove(self, vector_ids: list[int]) -> None:
        if vector_ids:
            self._apply("remove", vector_ids, None)

    def _apply(self, op: str, ids: list[int], vector: Any) -> None:
        import numpy as np

        keys = np.asarray(ids, dtype=np.int64)
        if op == "add":
            self.index.add(keys, vector)
        else:
            self.index.remove(keys)
        if self._log is not None:
            self._log.append((op, keys, vector))
        self.dirty = True

    def maybe_compact(self, spawn: SpawnFn) -> None:
        if self.rebuilding is None and self.index.needs_compaction():
            self.rebuilding = spawn(self.compact())

    async def compact(self) -> None:
        """Rebuild without tombstones in a worker thread; writes made meanwhile are replayed."""
        try:
            async with self.lock:
                snapshot = await asyncio.to_thread(self.index.live_vectors)
                self._log = []
            fresh = await asyncio.to_thread(self.index.rebuilt, *snapshot)
            async with self.lock:
                for op, keys, vector in self._log:
                    if op == "add":
                        fresh.add(keys, vector)
                    else:
                        fresh.remove(keys)
                self.index = fresh
                self.dirty = True
        finally:
            self._log = None
            self.rebuilding = None

    async def save(self) -> None:
        """Write the file if the index changed (the lock keeps writers out meanwhile)."""
        if not self.path:
            return
        async with self.lock:
            if self.dirty:
                await asyncio.to_thread(self.index.save, self.path)
                self.dirty = False

    def info(self) -> dict[str, Any]:
        return {
            "size": len(self.index),
            "tombstones": int(self.index.tombstones),
            "dim": self.dim,
            "memory_bytes": self.index.memory_bytes(),
            "loaded_from": self.source,
            "note": self.note,
            "rebuilding": self.rebuilding is not None,
            "path": self.path,
        }
