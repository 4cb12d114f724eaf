"""The Layer 3 interfaces: ``ResponseCache`` (what the gateway calls) and ``VectorIndex``.

A cache entry is keyed by more than the last message: ``CacheKey.scope`` hashes everything that
must match exactly (tenant, system prompt, earlier turns, tools, response_format, sampling
parameters); only ``CacheKey.query`` (the last user turn) is compared semantically.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from layers.registry import resolve

if TYPE_CHECKING:
    import numpy as np

    from layers.types import Prompt


class CacheKey(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    scope: str  # hash of everything that must match exactly, tenant included
    exact: str  # hash of scope + the normalised last user turn
    query: str  # the last user turn, compared semantically


class CacheHit(msgspec.Struct, kw_only=True):
    entry_id: str
    kind: str  # "exact" | "semantic"
    similarity: float
    source_model: str
    age_s: float
    response: dict[str, Any]  # the stored chat.completion body (without routing)
    request_id: str  # the request that produced the stored answer


class ResponseCache(abc.ABC):
    name: ClassVar[str] = "abstract"

    async def start(self) -> None:  # noqa: B027
        """Load or rebuild the index from storage."""

    async def close(self) -> None:  # noqa: B027
        """Persist the index."""

    @abc.abstractmethod
    async def lookup(self, key: CacheKey, prompt: Prompt, min_capability: float) -> CacheHit | None:
        """The best servable entry: exact tier first, then semantic; ``None`` on a miss."""

    @abc.abstractmethod
    async def store(
        self,
        key: CacheKey,
        prompt: Prompt,
        response: dict[str, Any],
        model: str,
        capability: float,
        request_id: str,
        cost_usd: float | None = None,
    ) -> str | None:
        """Store a complete, successful answer; returns the entry id (None if refused).

        ``cost_usd`` is what producing the answer cost (for the "dollars saved" counter); when
        omitted the cache reads it from the producing request's history row on the first hit.
        """

    def storing(self, key: CacheKey, request_id: str) -> None:
        """Announce a ``store`` of ``key`` that will run in the background (optional).

        The gateway answers before the store finishes; a cache may let lookups of the same key
        wait for it, so a client that repeats a question at once still gets the stored answer.
        """
        return None

    async def evict_request(self, request_id: str) -> int:
        """Evict entries produced by or served for ``request_id`` (negative feedback)."""
        return 0

    async def evict_entry(self, entry_id: str) -> int:
        """Evict one entry by id (the entry a request was served from)."""
        return 0

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """Counters and sizes; ``tenant`` restricts them to one tenant's entries and lookups."""
        return {"backend": self.name}


class VectorIndex(abc.ABC):
    """An inner-product index over L2-normalised vectors with integer ids."""

    name: ClassVar[str] = "abstract"

    @abc.abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abc.abstractmethod
    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(ids, similarities)`` best first; ids of -1 mean no result."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None: ...

    @abc.abstractmethod
    def save(self, path: str) -> None: ...

    @abc.abstractmethod
    def load(self, path: str) -> None: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    # Optional, used by SemanticCache to check a reloaded index, to search inside one scope and
    # to compact tombstones in a worker thread.
    dim: int = 0
    tombstones: int = 0

    def needs_compaction(self) -> bool:
        return False

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of every live entry (a snapshot for ``rebuilt``)."""
        ids = self.ids()
        return ids, self.reconstruct(ids)

    def rebuilt(self, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """A new index of the same kind holding exactly ``ids``; must not touch ``self``'s state."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        return 0

    def ids(self) -> np.ndarray:
        """Every live id (to compare a reloaded index with the entries in storage)."""
        raise NotImplementedError

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (shape ``(len(ids), dim)``)."""
        raise NotImplementedError

    def search_subset(self, vector: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search restricted to ``ids`` (a small scope inside a large shared index)."""
        import numpy as np

        keys = np.asarray(ids, dtype=np.int64).reshape(-1)
        scores = self.reconstruct(keys) @ np.asarray(vector, dtype=np.float32).reshape(-1)
        if k < len(keys):
            top = np.argpartition(-scores, k)[:k]
            keys, scores = keys[top], scores[top]
        order = np.argsort(-scores, kind="stable")
        return keys[order], scores[order].astype(np.float32)


CACHE_CLS: dict[str, str] = {
    "semantic": "layers.cache.semantic:SemanticCache",
}

INDEX_CLS: dict[str, str] = {
    "flat": "layers.cache.index:FlatIndex",
    "hnsw": "layers.cache.index:HNSWIndex",
}


def build_index(name: str, dim: int, **options: Any) -> VectorIndex:
    """A vector index by registry name (``flat``, ``hnsw``) with its options."""
    cls = resolve(INDEX_CLS, name, "vector index")
    return cls(dim, **options)


def build_cache(name: str, options: dict[str, Any], **services: Any) -> ResponseCache:
    """A cache backend by registry name; ``services`` are the gateway's (``db``, ``embedder``)."""
    cls = resolve(CACHE_CLS, name, "cache backend")
    return cls(options, **services)
