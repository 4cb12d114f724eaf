"""Fleet mode: this replica's in-memory views follow the changes other replicas make.

``start_following`` starts the ``Follower`` (compass/storage/follower.py) at the position the
restart fold was read at, with one handler per event kind:

- ``reward``: the selector forgets the rewards the new one superseded and observes it, exactly
  what the replica that accepted the feedback did, so every replica's posteriors stay one fold
  (the history writer's recent requests note it too: feedback spooled in an outage knows what it
  supersedes);
- ``cache_put`` / ``cache_del``: the cache adds the entry (metadata and vector, read by id) to
  its FAISS index, or drops it;
- ``keys``: the key table is reloaded (registered by the HTTP app, which owns the key ring).

Circuit breakers and rate-limit buckets are not followed here (breakers are per replica by design).

A follower cut off for more than half the events' retention calls ``resync``: the posteriors are
rebuilt from a snapshot of the rewards (the restart fold), the key table reloaded and the cache
mirrored from the store as a whole, and following resumes at the snapshot. So that the rebuild
loses none of this replica's own changes (the follower skips its own events), ``Layer2Gate``
holds feedback while the snapshot is read and rebuilt, the spool must have been replayed first,
and a failure's zero reward observed meanwhile is applied after the rebuild unless the snapshot
has it already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from compass.storage.fleet_log import FleetEvent, Position, emit
from compass.storage.follower import Follower
from compass.storage.pg_rows import reward_event_of
from compass.storage.rewards import UNROUTED_CONTEXT
from layers.bandit.base import RewardEvent

log = logging.getLogger("compass.fleet")
SPOOL_WAIT_S = 60.0  # a resync waits this long for the outage spool's replay, then tries later


class Layer2Gate:
    """Holds this replica's own posterior changes while a resync rebuilds them from a snapshot."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self.deferred: list[RewardEvent] | None = None  # failures observed while closed

    @contextlib.asynccontextmanager
    async def passing(self) -> AsyncIterator[None]:
        """Feedback's store write and its posterior change: waits while a resync runs."""
        await self._open.wait()
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    def defer(self, event: RewardEvent) -> bool:
        """A failure's zero reward while closed: kept for after the rebuild (True), else False."""
        if self.deferred is None:
            return False
        self.deferred.append(event)
        return True

    async def close(self) -> None:
        self.deferred = []
        self._open.clear()
        await self._idle.wait()

    def reopen(self) -> list[RewardEvent]:
        deferred, self.deferred = self.deferred or [], None
        self._open.set()
        return deferred


async def resync(services: Any, follower: Follower) -> Position:
    """Rebuild the followed views from the tables, as a restart does; the position to follow from."""
    from compass.storage.pg_rows import rebuild_rewards_pg

    history, rows, gate = services.history, services.rows, services.extras["fleet_gate"]
    started = time.monotonic()
    recent = getattr(history, "recent", None)
    while getattr(history, "degraded", False) or (recent is not None and recent.has_waiting()):
        if time.monotonic() - started > SPOOL_WAIT_S:  # its rows' local effects predate the snapshot
            raise RuntimeError("the outage spool is still being replayed; the resync waits for it")
        await asyncio.sleep(0.1)
    await gate.close()
    try:
        await history.flush()  # failure rewards observed before this are in the snapshot
        events, position = await rows.run(rebuild_rewards_pg)
    except BaseException:
        _observe(services, gate.reopen())
        raise
    if services.selector is not None:
        services.selector.rebuild(events)
    fold = set(events)
    _observe(services, [e for e in gate.reopen() if e not in fold])  # committed after the snapshot
    for handler in follower.handlers.get("keys", ()):
        await handler([])
    cache = services.cache
    if cache is not None and hasattr(cache, "follow_all"):
        added, removed = await cache.follow_all()
        log.info("fleet: cache mirrored from the store (%d entries added, %d dropped)", added, removed)
    log.info("fleet: posteriors rebuilt from %d reward events", len(events))
    return position


def _observe(services: Any, events: list[RewardEvent]) -> None:
    if services.selector is not None:
        for event in events:
            services.selector.observe(event)


def cache_store_for(services: Any) -> Any:
    """The cache's store on the fleet store (None in embedded mode: the cache uses the DuckDB file)."""
    rows = services.rows
    if rows is None or rows.fleet is None:
        return None
    from layers.cache.stores import build_cache_store

    origin = rows.origin

    def notify(con: Any, kind: str, payload: Any) -> None:
        emit(con, origin, kind, payload)

    return build_cache_store(rows.backend, rows.runner, notify=notify)


def start_following(services: Any) -> Follower | None:
    rows = services.rows
    if rows is None or rows.fleet is None:
        return None
    link = rows.fleet
    if link.start is None:
        raise RuntimeError("fleet: the rewards were not loaded, so there is no position to follow from")
    follower = Follower(link.url, rows.origin, link.connect_timeout_s)
    services.extras["fleet_gate"] = Layer2Gate()
    follower.resync = lambda: resync(services, follower)

    recent = getattr(services.history, "recent", None)

    async def on_rewards(batch: list[FleetEvent]) -> None:
        selector = services.selector
        if selector is None:
            return
        for item in batch:
            event = reward_event_of(item.payload["event"])
            if recent is not None:
                recent.feedback_seen(event)
            if event.context == UNROUTED_CONTEXT:
                continue
            for old in item.payload.get("replaced", ()):
                selector.forget(reward_event_of(old))
            selector.observe(event)

    async def on_cache_put(batch: list[FleetEvent]) -> None:
        cache = services.cache
        if cache is not None and hasattr(cache, "follow_put"):
            await cache.follow_put([(item.payload["id"], item.payload.get("victims", [])) for item in batch])

    async def on_cache_del(batch: list[FleetEvent]) -> None:
        cache = services.cache
        if cache is not None and hasattr(cache, "follow_del"):
            await cache.follow_del([i for item in batch for i in item.payload["ids"]])

    follower.on("reward", on_rewards)
    follower.on("cache_put", on_cache_put)
    follower.on("cache_del", on_cache_del)
    follower.start(link.start)
    link.follower = follower
    log.info("fleet: following the other replicas (LISTEN, and a poll every %.2fs)", follower.poll_s)
    return follower


async def stop_following(services: Any) -> None:
    """Stop the follower off the loop: its thread may be waiting for the loop to apply a batch."""
    rows = services.rows
    if rows is not None and rows.fleet is not None and rows.fleet.follower is not None:
        follower, rows.fleet.follower = rows.fleet.follower, None
        await asyncio.to_thread(follower.stop)


def on_keys_changed(services: Any, reload: Any) -> None:
    """Reload the key table whenever another replica or ``compass keys`` changes it."""
    rows = services.rows
    follower = None if rows is None or rows.fleet is None else rows.fleet.follower
    if follower is None:
        return

    async def on_keys(_: list[FleetEvent]) -> None:
        await reload()

    follower.on("keys", on_keys)
