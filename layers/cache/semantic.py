"""``SemanticCache``: Layer 3, an exact tier and a FAISS semantic tier over DuckDB-persisted entries.

Lookup (``CacheKey`` from ``layers.cache.keys``):

1. exact tier: an entry with the same ``exact`` hash (same tenant, same context, same
   whitespace-normalised last user turn);
2. semantic tier: inside the same ``scope`` (tenant, system prompt, earlier turns, tools,
   response_format, ... all equal), the entries whose last user turn's MiniLM embedding has a
   cosine similarity ``>= threshold`` with this one, best first, each checked by the near-miss
   guard (``layers.cache.guard``: numbers, negation, named entities must agree).

Either tier serves an entry only if it is younger than ``ttl_s`` and was produced by a model at
least as capable as the one the router chose (``min_capability``).

Persistence: every entry (embedding included) is a row of ``cache_entries``, through a
``CacheStore`` (``layers.cache.stores``: the DuckDB file, or PostgreSQL in fleet mode, where the
cache also follows other replicas' stores and evictions, ``follow_put`` / ``follow_del``); the FAISS index is
saved to ``index_path`` every ``save_interval_s`` and on close. At start the file is used if every
stored entry is in it and a sample of its vectors equals the stored ones; otherwise the index is
rebuilt from the table, so a crash or a deleted/stale file never loses an entry.

Concurrency: everything in memory (entry maps, the index) is read and mutated on the event loop
thread only; writers additionally take one ``asyncio.Lock`` so that a DuckDB write and the
in-memory mutation it belongs to happen as one step. Compacting tombstones (an HNSW rebuild) runs
in a worker thread on a snapshot while lookups keep using the old index; the writes made
meanwhile are replayed onto the new index before the swap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from layers.cache import store
from layers.cache.base import CacheHit, CacheKey, ResponseCache, VectorIndex
from layers.cache.counters import CacheCounters
from layers.cache.entries import Entries, Entry
from layers.cache.guard import near_miss
from layers.cache.index import single_threaded_here
from layers.cache.keys import normalise_text
from layers.cache.live import LiveIndex
from layers.cache.options import (  # noqa: F401 - DEFAULT_THRESHOLD, STORE_WAIT_S re-exported
    CAPABILITY_EPS,
    DEFAULT_THRESHOLD,
    DEFAULTS,
    MAX_GLOBAL_K,
    STORE_WAIT_S,
)
from layers.cache.stores import CacheStore, DuckDBCacheStore
from layers.cache.writes import CacheWrites, _InFlight
from layers.types import EmbedderBusy

if TYPE_CHECKING:
    import numpy as np

    from layers.types import Prompt

log = logging.getLogger("compass.cache")


class SemanticCache(CacheWrites, ResponseCache):
    name: ClassVar[str] = "semantic"

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        db: Any = None,
        embedder: Any = None,
        store: CacheStore | None = None,
    ) -> None:
        unknown = set(options or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown cache options {sorted(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
        opts = {**DEFAULTS, **(options or {})}
        self.options = opts
        self.threshold = float(opts["threshold"])
        self.guard = bool(opts["guard"])
        self.semantic = bool(opts["semantic"])
        self.ttl_s = float(opts["ttl_s"] or 0) or None
        self.max_entries = int(opts["max_entries"])
        self.top_k = max(1, int(opts["top_k"]))
        self.semantic_max_chars = int(opts["semantic_max_chars"])
        self.subset_max = int(opts["subset_max"])
        self.embed_wait_s = float(opts["embed_wait_ms"]) / 1000.0
        self.store_finish_reasons = frozenset(opts["store_finish_reasons"])
        self.save_interval_s = float(opts["save_interval_s"] or 0)
        self.sweep_interval_s = float(opts["sweep_interval_s"])
        self.index_kind = str(opts["index"])
        self.index_options = dict(opts["index_options"])
        self.index_path: str | None = opts["index_path"]
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.db = db
        self.storage: CacheStore | None = store or (DuckDBCacheStore(db) if db is not None else None)
        self.embedder = embedder
        self.dim = int(opts["dim"] or getattr(embedder, "dim", 0) or 384)
        self.clock: Callable[[], float] = time.time  # tests move time forward
        self.entries = Entries()
        self._lock = asyncio.Lock()  # writers only: a DuckDB write and its in-memory mutation
        self.live = LiveIndex(self.index_kind, self.dim, self.index_options, self.index_path, self._lock)
        self.counters = CacheCounters()
        self._next_vector_id = 1
        self._saver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._storing: dict[str, _InFlight] = {}  # exact hash -> the stores of it in flight
        self._storing_requests: dict[str, _InFlight] = {}  # request id -> its store in flight
        self._last_sweep = 0.0

    # -- start and stop ------------------------------------------------------------------------

    @property
    def index(self) -> VectorIndex:
        return self.live.index

    def _semantic_ok(self, query: str) -> bool:
        return bool(normalise_text(query)) and len(query) <= self.semantic_max_chars

    async def start(self) -> None:
        """Load the entries and counters, then the index file if consistent (else rebuild it)."""
        import numpy as np

        if self.storage is None:
            raise ValueError("the semantic cache needs the gateway's database (db=... or store=...)")
        if self.options["single_threaded_search"]:
            single_threaded_here()  # lookups run on this (the event loop's) thread
        rows = await self.storage.load_entries()
        counters = await self.storage.load_counters()
        self.entries = Entries()
        for row in rows:
            self.entries.add(Entry.from_row(row, self._semantic_ok(row[5])))
        self.counters.load(counters, skip_tenant=store.META_TENANT)
        high = max((int(row[0]) for row in rows), default=0) + 1
        self._next_vector_id = max(high, int(counters.get((store.META_TENANT, "next_vector_id"), 1)))
        stored = np.fromiter(self.entries.by_vector, dtype=np.int64, count=len(self.entries))
        await self.live.load_or_rebuild(self.storage, stored)
        now = self.clock()
        victims = self.entries.expired(now - self.ttl_s) if self.ttl_s else []
        if victims:
            await self._evict(victims, "ttl")
        if len(self.entries) > self.max_entries:
            await self._evict(self.entries.least_recent(len(self.entries) - self.max_entries), "lru")
        self._last_sweep = now
        await self.live.save()
        if self.index_path and self.save_interval_s > 0:
            self._saver = asyncio.ensure_future(self._save_periodically())
        note = f" ({self.live.note})" if self.live.note else ""
        count = len(self.entries)
        log.info("cache: %d entries, %s index %s%s", count, self.index_kind, self.live.source, note)

    async def close(self) -> None:
        """Finish background work, write pending counters and save the index."""
        if self._saver is not None:
            self._saver.cancel()
            self._saver = None
        await self.wait_idle()
        pending = self.counters.take_pending()
        if pending and self.storage is not None:
            await self.storage.add_counters(pending)
        await self.live.save()

    async def wait_idle(self) -> None:
        """Wait for background evictions and a running index rebuild."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def save(self) -> None:
        """Write the index file now if it changed."""
        await self.live.save()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.save_interval_s)
            try:
                await self.live.save()
            except Exception:
                log.exception("saving the cache index failed")

    # -- lookup --------------------------------------------------------------------------------

    async def lookup(self, key: CacheKey, prompt: Prompt, min_capability: float) -> CacheHit | None:
        """A hit, or None on a miss; a failing cache (DuckDB, FAISS) is a miss, never an error."""
        try:
            return await self._lookup(key, prompt, min_capability)
        except TimeoutError:  # the embedder is backed up: answer now, the store still gets the vector
            self.counters.count(key.tenant, "embed_timeouts")
            self.counters.count(key.tenant, "misses")
            return None
        except EmbedderBusy:  # the embedder's backlog is full: a miss, without queueing more
            self.counters.count(key.tenant, "embed_busy")
            self.counters.count(key.tenant, "misses")
            return None
        except Exception:
            log.exception("cache lookup failed; answering as a miss")
            self.counters.count(key.tenant, "errors")
            return None

    async def _lookup(self, key: CacheKey, prompt: Prompt, min_capability: float) -> CacheHit | None:
        pending = self._storing.get(key.exact)
        if pending is not None:  # the same question's answer is being stored right now
            await asyncio.wait([pending.done], timeout=STORE_WAIT_S)
        now = self.clock()
        self.counters.count(key.tenant, "lookups")
        expired: list[Entry] = []
        refused: set[str] = set()
        entry = self.entries.by_exact.get(key.exact)
        if entry is not None and entry.tenant == key.tenant and entry.scope == key.scope:
            if self._expired(entry, now):
                expired.append(entry)
            elif entry.capability + CAPABILITY_EPS < min_capability:
                refused.add("capability")
            else:
                hit = await self._serve(entry, "exact", 1.0, now)
                if hit is not None:
                    return hit
        if self.semantic and self._semantic_ok(key.query) and self.entries.scope_size(key.scope):
            vector = await self._embedding(key, prompt, wait=self.embed_wait_s)
            for entry, score in self._candidates(key.scope, vector):
                if entry.tenant != key.tenant:
                    continue
                if self._expired(entry, now):
                    expired.append(entry)
                    continue
                if entry.capability + CAPABILITY_EPS < min_capability:
                    refused.add("capability")
                    continue
                reason = near_miss(key.query, entry.query) if self.guard else None
                if reason is not None:
                    refused.add(reason)
                    continue
                hit = await self._serve(entry, "semantic", score, now)
                if hit is not None:
                    return hit
        if expired:
            self._spawn(self._evict(expired, "ttl"))
        for reason in refused:
            self.counters.count(key.tenant, f"refused_{reason}")
        self.counters.count(key.tenant, "misses")
        return None

    def _expired(self, entry: Entry, now: float) -> bool:
        return self.ttl_s is not None and now - entry.created_at >= self.ttl_s

    async def _embedding(self, key: CacheKey, prompt: Prompt, wait: float | None) -> np.ndarray:
        """The request's shared embedding (computed once per request, also used by Layer 1).

        A lookup waits at most ``wait`` seconds (``embed_wait_ms``); a store waits as long as it takes.
        """
        import numpy as np

        if prompt.has_embedder or self.embedder is None:
            # computed already, or now (raises without embedder); shared, so a timeout here
            # leaves the computation running for the store
            vector = await asyncio.wait_for(prompt.embedding(), wait)
        else:
            try:
                vector = await prompt.embedding()  # set by the caller
            except RuntimeError:
                vector = (await asyncio.wait_for(self.embedder.embed([key.query]), wait))[0]
                prompt.set_embedding(vector)
        return np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)

    def _candidates(self, scope: str, vector: np.ndarray) -> list[tuple[Entry, float]]:
        """Entries of ``scope`` at or above the threshold, best first (at most ``top_k``).

        A small scope is searched exactly among its own vectors; a large one through the shared
        index, asking for enough neighbours that ``top_k`` of them are likely in the scope.
        """
        size = self.entries.scope_size(scope)
        total = len(self.index)
        if size <= self.subset_max or total == 0:
            scope_ids = self.entries.scope_ids(scope)
            ids, scores = self.index.search_subset(vector, min(self.top_k, size), scope_ids)
        else:
            k = min(total, MAX_GLOBAL_K, max(self.top_k, math.ceil(2 * self.top_k * total / size)))
            ids, scores = self.index.search(vector, k)
        out: list[tuple[Entry, float]] = []
        for vector_id, score in zip(ids.tolist(), scores.tolist(), strict=True):
            if vector_id < 0 or score < self.threshold:
                break
            entry = self.entries.by_vector.get(vector_id)
            if entry is not None and entry.scope == scope and entry.semantic:
                out.append((entry, float(score)))
                if len(out) >= self.top_k:
                    break
        return out

    async def _serve(self, entry: Entry, kind: str, similarity: float, now: float) -> CacheHit | None:
        """Read the stored answer and count the hit (None if the entry was evicted meanwhile)."""
        hit = Counter({(entry.tenant, f"hits_{kind}"): 1, (entry.tenant, "tokens_saved"): entry.tokens})
        assert self.storage is not None
        found = await self.storage.hit_entry(entry.id, now, self.counters.take_pending(), hit)
        if found is None:
            return None
        response, cost = found
        entry.cost_usd = cost
        hit[(entry.tenant, "usd_saved")] += cost or 0.0
        self.counters.written(hit)
        self.entries.touch(entry, now)
        return CacheHit(
            entry_id=entry.id,
            kind=kind,
            similarity=similarity,
            source_model=entry.model,
            age_s=max(0.0, now - entry.created_at),
            response=msgspec.json.decode(response),
            request_id=entry.request_id,
        )

    # -- store and evict -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """Entries, hits by tier, hit rate, refusals, evictions, savings; the index when global."""
        out: dict[str, Any] = {
            "backend": self.name,
            "enabled": True,
            "entries": len(self.entries) if tenant is None else self.entries.per_tenant.get(tenant, 0),
            "max_entries": self.max_entries,
            "ttl_s": self.ttl_s,
            "threshold": self.threshold,
            "guard": self.guard,
            **self.counters.summary(tenant),
            "index": {"kind": self.index_kind},
        }
        if tenant is None:
            out["index"].update(self.live.info())
        return out
