"""The small storage interface that moves request and reward rows onto the fleet store.

``RowStore`` bundles where statements run (``Database`` for the embedded DuckDB file,
``PostgresStore`` with ``storage.url``) with the dialect's functions for the rows that Layer 2's
fold needs: history inserts, reward inserts, the reward fold, and feedback's find-and-supersede.
Everything else (keys, cache entries, stats, ``compass sql``, retention) still reads the DuckDB
file in both modes: issue 14 is in progress (docs/deploy.md says what has moved).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RowStore:
    backend: str  # "duckdb" | "postgresql"
    runner: Any  # Database | PostgresStore: run(fn, *args) / run_sync(fn, *args) on its own thread
    insert_requests: Callable[[Any, list[dict[str, Any]]], None]
    insert_reward: Callable[..., str]
    load_reward_events: Callable[[Any], list[Any]]
    apply_feedback: Callable[..., dict[str, Any] | None]
    display: str = ""  # where, without secrets (for /health)

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
        load_reward_events_pg,
    )

    return RowStore(
        backend="postgresql",
        runner=store,
        insert_requests=insert_requests_pg,
        insert_reward=insert_reward_pg,
        load_reward_events=lambda con: load_reward_events_pg(con)[0],
        apply_feedback=apply_feedback_pg,
        display=store.display,
    )
