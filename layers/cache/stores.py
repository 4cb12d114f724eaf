"""``CacheStore``: where the semantic cache persists its entries, vectors and counters.

One interface, chosen by registry name like every layer part: ``duckdb`` (the embedded file,
``layers.cache.store``'s statements) and ``postgresql`` (the fleet store, ``layers.cache.store_pg``).
Both run their statements on the gateway's storage runner (``run(fn, *args)`` on its own thread).
The in-memory view (entries, FAISS index) stays in ``SemanticCache``; a ``shared`` store is one
other replicas write too, so the cache follows their changes (``follow_put`` / ``follow_del``).

tests/test_cache_stores.py runs one contract suite over both.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

from layers.cache import store
from layers.cache.store import Increments
from layers.registry import resolve

# (connection, kind, payload) -> None: append a change event in the caller's transaction.
Notify = Callable[[Any, str, Any], None]


class CacheStore(abc.ABC):
    name: ClassVar[str] = "abstract"
    shared: ClassVar[bool] = False  # other replicas write the same entries

    def __init__(self, runner: Any, notify: Notify | None = None) -> None:
        self.runner = runner
        self.notify = notify

    @abc.abstractmethod
    async def load_entries(self) -> list[tuple]:
        """Every entry's metadata (``store.ENTRY_COLUMNS``), least recently used first."""

    @abc.abstractmethod
    async def load_vectors(self, vector_ids: list[int] | None, dim: int) -> tuple[Any, Any]:
        """``(vector ids, float32 vectors)`` of the given entries (all when None), by vector id."""

    @abc.abstractmethod
    async def load_counters(self) -> Increments: ...

    @abc.abstractmethod
    async def next_vector_id(self, local_next: int) -> int:
        """A vector id never used before (``local_next`` is the cache's own counter)."""

    @abc.abstractmethod
    async def write_entry(
        self, row: dict[str, Any], vector: Any, response: str, victims: list[str], increments: Increments
    ) -> None:
        """One transaction: delete ``victims``, insert the entry, add to the counters."""

    @abc.abstractmethod
    async def delete_entries(self, entry_ids: list[str], increments: Increments) -> None: ...

    @abc.abstractmethod
    async def hit_entry(
        self, entry_id: str, now: float, pending: Increments, hit: Increments
    ) -> tuple[str, float | None] | None:
        """Record a hit: ``(stored response JSON, cost)``, or None if the entry is gone."""

    @abc.abstractmethod
    async def served_entry(self, request_id: str) -> str | None:
        """The entry a request was answered from, per its history row."""

    @abc.abstractmethod
    async def add_counters(self, increments: Increments) -> None: ...

    @abc.abstractmethod
    async def fetch_entries(self, entry_ids: list[str], dim: int) -> list[tuple[tuple, Any]]:
        """``(metadata row, vector)`` of the entries that still exist (following another replica)."""


class DuckDBCacheStore(CacheStore):
    name: ClassVar[str] = "duckdb"

    async def load_entries(self) -> list[tuple]:
        return await self.runner.run(store.load_entries)

    async def load_vectors(self, vector_ids: list[int] | None, dim: int) -> tuple[Any, Any]:
        return await self.runner.run(store.load_vectors, vector_ids, dim)

    async def load_counters(self) -> Increments:
        return await self.runner.run(store.load_counters)

    async def next_vector_id(self, local_next: int) -> int:
        return local_next  # one process owns the file; the high-water mark is persisted

    async def write_entry(
        self, row: dict[str, Any], vector: Any, response: str, victims: list[str], increments: Increments
    ) -> None:
        await self.runner.run(store.write_entry, row, vector, response, victims, increments)

    async def delete_entries(self, entry_ids: list[str], increments: Increments) -> None:
        await self.runner.run(store.delete_entries, entry_ids, increments)

    async def hit_entry(
        self, entry_id: str, now: float, pending: Increments, hit: Increments
    ) -> tuple[str, float | None] | None:
        return await self.runner.run(store.hit_entry, entry_id, now, pending, hit)

    async def served_entry(self, request_id: str) -> str | None:
        return await self.runner.run(store.served_entry, request_id)

    async def add_counters(self, increments: Increments) -> None:
        await self.runner.run(store.add_counters, increments)

    async def fetch_entries(self, entry_ids: list[str], dim: int) -> list[tuple[tuple, Any]]:
        return await self.runner.run(store.fetch_entries, entry_ids, dim)


CACHE_STORE_CLS: dict[str, str] = {
    "duckdb": "layers.cache.stores:DuckDBCacheStore",
    "postgresql": "layers.cache.store_pg:PostgresCacheStore",
}


def build_cache_store(name: str, runner: Any, notify: Notify | None = None) -> CacheStore:
    """A cache store by registry name (the storage backend: ``duckdb``, ``postgresql``)."""
    cls = resolve(CACHE_STORE_CLS, name, "cache store")
    return cls(runner, notify)
