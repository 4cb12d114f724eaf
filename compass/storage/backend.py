"""The small storage interface that moves request and reward rows onto the fleet store.

``RowStore`` bundles where statements run (``Database`` for the embedded DuckDB file,
``PostgresStore`` with ``storage.url``) with the dialect's functions for the rows that Layer 2's
fold needs: history inserts, reward inserts, the reward fold, and feedback's find-and-supersede.
API keys and cache entries run on the same ``runner`` (keys.py is dialect-neutral; the cache picks
its store by ``backend``). On PostgreSQL, ``fleet`` says how this replica follows the others
(compass/storage/follower.py) and ``origin`` names its events. Stats, ``compass sql`` and retention
still read the DuckDB file: issue 14 is in progress (docs/deploy.md says what has moved).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class FleetLink:
    """What the follower needs: the URL, and where to start (set by the restart fold's snapshot)."""

    url: str
    connect_timeout_s: float
    start: Any = None  # fleet_log.Position once the rewards were loaded
    follower: Any = None  # the running Follower


@dataclass(frozen=True)
class RowStore:
    backend: str  # "duckdb" | "postgresql"
    runner: Any  # Database | PostgresStore: run(fn, *args) / run_sync(fn, *args) on its own thread
    insert_requests: Callable[[Any, list[dict[str, Any]]], None]
    insert_reward: Callable[..., str]
    load_reward_events: Callable[[Any], list[Any]]
    apply_feedback: Callable[..., dict[str, Any] | None]
    display: str = ""  # where, without secrets (for /health)
    origin: str = ""  # this replica's name on the events it appends (PostgreSQL)
    fleet: FleetLink | None = None  # how this replica follows the others (PostgreSQL)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.runner.run(fn, *args)


def duckdb_rows(db: Any) -> RowStore:
    from compass.storage.history import insert_requests
    from compass.storage.rewards import apply_feedback, insert_reward, load_reward_events

    return RowStore(
        backend="duckdb",
        runner=db,
        insert_requests=insert_requests,
        insert_reward=insert_reward,
        load_reward_events=load_reward_events,
        apply_feedback=apply_feedback,
        display=str(db.path),
    )


def postgres_rows(store: Any) -> RowStore:
    from compass.storage.pg_rows import (
        apply_feedback_pg,
        insert_requests_pg,
        insert_reward_pg,
        rebuild_rewards_pg,
    )

    origin = uuid.uuid4().hex[:16]
    link = FleetLink(url=store.url, connect_timeout_s=store.connect_timeout_s)

    def load_reward_events(con: Any) -> list[Any]:
        events, link.start = rebuild_rewards_pg(con)
        return events

    return RowStore(
        backend="postgresql",
        runner=store,
        insert_requests=insert_requests_pg,
        insert_reward=lambda con, *args: insert_reward_pg(con, *args, origin=origin),
        load_reward_events=load_reward_events,
        apply_feedback=lambda con, *args, **kw: apply_feedback_pg(con, *args, origin=origin, **kw),
        display=store.display,
        origin=origin,
        fleet=link,
    )
