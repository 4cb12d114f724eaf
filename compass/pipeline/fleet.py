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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from compass.storage.fleet_log import FleetEvent, emit
from compass.storage.follower import Follower
from compass.storage.pg_rows import reward_event_of
from compass.storage.rewards import UNROUTED_CONTEXT

log = logging.getLogger("compass.fleet")


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
