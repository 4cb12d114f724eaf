"""Layer 3: the semantic cache in front of the upstream call."""

from layers.cache.base import (
    CACHE_CLS,
    INDEX_CLS,
    CacheHit,
    CacheKey,
    ResponseCache,
    VectorIndex,
    build_cache,
)

__all__ = ["CACHE_CLS", "INDEX_CLS", "CacheHit", "CacheKey", "ResponseCache", "VectorIndex", "build_cache"]
