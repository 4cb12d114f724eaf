"""The write side of ``SemanticCache``: store, replace, evict (LRU, TTL, feedback, retention).

Kept apart from the read side (``semantic.py``) so each stays readable; ``SemanticCache``
inherits these methods. Every write takes the cache's lock so that a DuckDB write and the
in-memory mutation it belongs to happen as one step (see ``semantic.py``'s docstring).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from layers.cache.base import CacheKey
from layers.cache.counters import CacheCounters
from layers.cache.entries import Entries, Entry
from layers.cache.live import LiveIndex
from layers.types import EmbedderBusy

if TYPE_CHECKING:
    import numpy as np

    from layers.types import Prompt


class _InFlight:
    """Background stores of one exact key: resolved when the last of them ends."""

    __slots__ = ("count", "done")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.count = 0
        self.done = done


class CacheWrites:
    """Store and evict; mixed into ``SemanticCache``, whose ``__init__`` sets these attributes."""

    storage: Any  # layers.cache.stores.CacheStore
    dim: int
    ttl_s: float | None
    max_entries: int
    store_finish_reasons: frozenset[str]
    sweep_interval_s: float
    clock: Callable[[], float]
    entries: Entries
    live: LiveIndex
    counters: CacheCounters
    _lock: asyncio.Lock
    _next_vector_id: int
    _storing: dict[str, _InFlight]
    _storing_requests: dict[str, _InFlight]
    _last_sweep: float

    def _semantic_ok(self, query: str) -> bool:
        raise NotImplementedError

    async def _embedding(self, key: CacheKey, prompt: Prompt, wait: float | None) -> np.ndarray:
        raise NotImplementedError

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        raise NotImplementedError

    def refusal(self, response: dict[str, Any]) -> str | None:
        """Why an answer must not be stored (None: store it).

        Only complete answers: every choice must end with a finish reason in
        ``store_finish_reasons`` (``stop``, ``tool_calls``; never ``length`` or
        ``content_filter``) and carry content or tool calls; refusals and errors are not stored.
        """
        if not isinstance(response, dict) or response.get("error"):
            return "error"
        choices = response.get("choices") or []
        if not choices:
            return "no choices"
        for choice in choices:
            reason = choice.get("finish_reason")
            if reason not in self.store_finish_reasons:
                return f"finish_reason {reason!r}"
            message = choice.get("message") or {}
            if message.get("refusal"):
                return "refusal"
            if not (message.get("content") or message.get("tool_calls") or message.get("function_call")):
                return "empty answer"
        return None

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
        try:
            return await self._store(key, prompt, response, model, capability, request_id, cost_usd)
        except EmbedderBusy:  # overloaded: skipping a store loses a future hit, queueing loses memory
            self.counters.count(key.tenant, "store_skipped_busy")
            return None
        finally:
            self._storing_requests.pop(request_id, None)
            pending = self._storing.get(key.exact)
            if pending is not None:
                pending.count -= 1
                if pending.count <= 0:
                    del self._storing[key.exact]
                    pending.done.set_result(None)

    def storing(self, key: CacheKey, request_id: str) -> None:
        """A store of ``key`` is about to run in the background: lookups of it wait for it briefly."""
        pending = self._storing.get(key.exact)
        if pending is None:
            pending = self._storing[key.exact] = _InFlight(asyncio.get_running_loop().create_future())
        pending.count += 1
        self._storing_requests[request_id] = pending

    async def _store(
        self,
        key: CacheKey,
        prompt: Prompt,
        response: dict[str, Any],
        model: str,
        capability: float,
        request_id: str,
        cost_usd: float | None,
    ) -> str | None:
        if self.refusal(response) is not None:
            self.counters.count(key.tenant, "store_refused")
            return None
        vector = await self._embedding(key, prompt, wait=None)  # in the background: no budget
        if vector.shape != (self.dim,):
            raise ValueError(f"embedding of shape {vector.shape}, expected ({self.dim},)")
        usage = response.get("usage") or {}
        body = msgspec.json.encode(response).decode()
        async with self._lock:
            now = self.clock()
            vector_id = await self.storage.next_vector_id(self._next_vector_id)
            entry = Entry(
                vector_id=vector_id,
                id=f"ce-{uuid.uuid4().hex[:24]}",
                tenant=key.tenant,
                scope=key.scope,
                exact=key.exact,
                query=key.query,
                model=model,
                capability=float(capability),
                request_id=request_id,
                created_at=now,
                last_hit_at=now,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                cost_usd=cost_usd,
                semantic=self._semantic_ok(key.query),
            )
            self._next_vector_id = max(self._next_vector_id, vector_id + 1)
            victims = self._displaced(entry, now)
            new: Counter[tuple[str, str]] = Counter({(key.tenant, "stores"): 1})
            for victim, reason in victims:
                new[(victim.tenant, f"evicted_{reason}")] += 1
            gone = [v.id for v, _ in victims]
            increments = self.counters.take_pending() + new
            await self.storage.write_entry(entry.row(), vector, body, gone, increments)
            self.counters.written(new)
            self._remove_locked([v for v, _ in victims])
            self.entries.add(entry)
            self.live.add(entry.vector_id, vector)
            self.live.maybe_compact(self._spawn)
        return entry.id

    def _displaced(self, entry: Entry, now: float) -> list[tuple[Entry, str]]:
        """What a new entry evicts: the entry it replaces, expired entries (each sweep), LRU ones."""
        victims: dict[str, tuple[Entry, str]] = {}
        same = self.entries.by_exact.get(entry.exact)
        if same is not None:
            victims[same.id] = (same, "replaced")  # newest answer wins (``refresh`` relies on it)
        if self.ttl_s and now - self._last_sweep >= self.sweep_interval_s:
            self._last_sweep = now
            for old in self.entries.expired(now - self.ttl_s):
                victims.setdefault(old.id, (old, "ttl"))
        overflow = len(self.entries) + 1 - len(victims) - self.max_entries
        if overflow > 0:
            for old in self.entries.least_recent(overflow, keep=set(victims)):
                victims[old.id] = (old, "lru")
        return list(victims.values())

    async def evict_request(self, request_id: str) -> int:
        """Evict what ``request_id`` produced and the entry it was served from (negative feedback)."""
        pending = self._storing_requests.get(request_id)
        if pending is not None:  # its answer may still be on its way into the cache
            await asyncio.wait([pending.done], timeout=5.0)
        ids = set(self.entries.by_request.get(request_id, ()))
        served = await self.storage.served_entry(request_id)
        if served:
            ids.add(served)
        unknown = [i for i in ids if i not in self.entries]
        if unknown and self.storage.shared:  # another replica's entry this one has not followed yet
            await self.storage.delete_entries(unknown, {})
        return await self._evict([self.entries.by_id[i] for i in ids if i in self.entries], "feedback")

    async def evict_entry(self, entry_id: str) -> int:
        entry = self.entries.by_id.get(entry_id)
        return 0 if entry is None else await self._evict([entry], "feedback")

    async def evict_older_than(self, cutoff: float) -> int:
        """Evict entries created before ``cutoff`` (epoch seconds): the history retention job."""
        return await self._evict(self.entries.expired(cutoff), "retention")

    async def _evict(self, victims: list[Entry], reason: str) -> int:
        async with self._lock:
            unique = {v.id: v for v in victims if v.id in self.entries}  # another writer may have won
            victims = list(unique.values())
            if not victims:
                return 0
            new: Counter[tuple[str, str]] = Counter()
            for victim in victims:
                new[(victim.tenant, f"evicted_{reason}")] += 1
            increments = self.counters.take_pending() + new
            await self.storage.delete_entries([v.id for v in victims], increments)
            self.counters.written(new)
            self._remove_locked(victims)
            self.live.maybe_compact(self._spawn)
        return len(victims)

    def _remove_locked(self, victims: list[Entry]) -> None:
        self.live.remove([v.vector_id for v in victims if self.entries.remove(v)])

    # -- following other replicas (a shared store) ------------------------------------------------

    async def follow_put(self, items: list[tuple[str, list[str]]]) -> int:
        """Other replicas stored entries, each ``(entry id, the ids it displaced)``, in commit order.

        Mirrors them here (metadata and vector read by id; an entry already gone is skipped);
        returns how many entries were added.
        """
        async with self._lock:
            wanted = [i for i, _ in items if i not in self.entries]
            fetched = await self.storage.fetch_entries(wanted, self.dim) if wanted else []
            found = {row[1]: (row, vector) for row, vector in fetched}
            added, losers = 0, []
            for entry_id, victims in items:
                self._remove_locked([self.entries.by_id[i] for i in victims if i in self.entries])
                if entry_id not in found or entry_id in self.entries:
                    continue
                row, vector = found[entry_id]
                entry = Entry.from_row(row, self._semantic_ok(row[5]))
                same = self.entries.by_exact.get(entry.exact)
                if same is not None:  # two replicas stored one question at once: the later id wins
                    if same.vector_id > entry.vector_id:
                        losers.append(entry.id)
                        continue
                    losers.append(same.id)
                    self._remove_locked([same])
                self.entries.add(entry)
                self.live.add(entry.vector_id, vector)
                self._next_vector_id = max(self._next_vector_id, entry.vector_id + 1)
                added += 1
            if losers:  # every replica picks the same winner; deleting twice is harmless
                await self.storage.delete_entries(losers, {})
            self.live.maybe_compact(self._spawn)
        return added

    async def follow_del(self, entry_ids: list[str]) -> int:
        """Another replica evicted ``entry_ids``: stop serving them here; returns entries removed."""
        async with self._lock:
            victims = [self.entries.by_id[i] for i in entry_ids if i in self.entries]
            self._remove_locked(victims)
            self.live.maybe_compact(self._spawn)
        return len(victims)

    async def follow_all(self) -> tuple[int, int]:
        """Cut off from the others for too long to follow: mirror the store's entries as a whole.

        Under the lock, entries the store no longer has are dropped; then the ones it has and this
        replica lacks are fetched as ``follow_put`` does. Returns ``(added, removed)``.
        """
        async with self._lock:
            stored = {row[1] for row in await self.storage.load_entries()}
            gone = [entry for entry_id, entry in self.entries.by_id.items() if entry_id not in stored]
            self._remove_locked(gone)
            missing = [entry_id for entry_id in stored if entry_id not in self.entries]
        added = await self.follow_put([(entry_id, []) for entry_id in missing]) if missing else 0
        return added, len(gone)
