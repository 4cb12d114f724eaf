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
    ) -> str | None:
        """Store a complete, successful answer; returns the entry id (None if refused)."""

    async def evict_request(self, request_id: str) -> int:
        """Evict entries produced by or served for ``request_id`` (negative feedback)."""
        return 0

    def stats(self) -> dict[str, Any]:
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


CACHE_CLS: dict[str, str] = {
    "semantic": "layers.cache.semantic:SemanticCache",
}

INDEX_CLS: dict[str, str] = {
    "flat": "layers.cache.index:FlatIndex",
    "hnsw": "layers.cache.index:HNSWIndex",
}


def build_cache(name: str, options: dict[str, Any], **services: Any) -> ResponseCache:
    cls = resolve(CACHE_CLS, name, "cache backend")
    return cls(options, **services)
