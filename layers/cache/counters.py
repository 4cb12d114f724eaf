"""The cache's counters: per tenant, in memory, persisted to ``cache_stats`` with the next write.

Lookups, misses and refusals happen on the read path, which should not write to DuckDB each
time; they are kept as *pending* increments and ride along with the next hit, store or eviction
(and are flushed on close). A crash loses at most those pending read-path counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Key = tuple[str, str]  # (tenant, counter name)
REFUSALS = ("capability", "numbers", "negation", "entities", "antonym", "order")
EVICTIONS = ("lru", "ttl", "feedback", "replaced", "retention")


class CacheCounters:
    def __init__(self) -> None:
        self.totals: Counter[Key] = Counter()  # everything counted, persisted or not
        self.pending: Counter[Key] = Counter()  # counted, not yet written to DuckDB

    def load(self, persisted: dict[Key, float], skip_tenant: str) -> None:
        self.totals = Counter({k: v for k, v in persisted.items() if k[0] != skip_tenant})
        self.pending = Counter()

    def count(self, tenant: str, name: str, amount: float = 1) -> None:
        """A read-path count: kept pending until the next write."""
        self.totals[(tenant, name)] += amount
        self.pending[(tenant, name)] += amount

    def take_pending(self) -> Counter[Key]:
        pending, self.pending = self.pending, Counter()
        return pending

    def written(self, increments: dict[Key, float]) -> None:
        """Increments just persisted by a write (pending ones excluded: they are in totals)."""
        for key, value in increments.items():
            self.totals[key] += value

    def summary(self, tenant: str | None) -> dict[str, Any]:
        """Hits by tier, hit rate, refusals, evictions and savings, for one tenant or all."""
        totals: Counter[str] = Counter()
        for (owner, name), value in self.totals.items():
            if tenant is None or owner == tenant:
                totals[name] += value
        hits = {"exact": int(totals["hits_exact"]), "semantic": int(totals["hits_semantic"])}
        lookups = int(totals["lookups"])
        return {
            "lookups": lookups,
            "hits": {**hits, "total": sum(hits.values())},
            "misses": int(totals["misses"]),
            "errors": int(totals["errors"]),
            "embed_timeouts": int(totals["embed_timeouts"]),
            "embed_busy": int(totals["embed_busy"]),
            "hit_rate": sum(hits.values()) / lookups if lookups else None,
            "refused": {r: int(totals[f"refused_{r}"]) for r in REFUSALS},
            "stores": int(totals["stores"]),
            "store_refused": int(totals["store_refused"]),
            "store_skipped_busy": int(totals["store_skipped_busy"]),
            "evictions": {r: int(totals[f"evicted_{r}"]) for r in EVICTIONS},
            "tokens_saved": int(totals["tokens_saved"]),
            "usd_saved": round(float(totals["usd_saved"]), 6),
        }
