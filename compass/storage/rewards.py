"""Reward rows: the event log that Layer 2's posteriors are a fold over (DuckDB; pg_rows.py: PostgreSQL).

Written by ``compass.pipeline.feedback`` (``POST /feedback``, upstream failures); read back at
start-up by ``Services`` and by ``compass route`` to rebuild the same posteriors.
"""

from __future__ import annotations

import uuid
from typing import Any

from compass.storage.history import utcnow
from layers.bandit.base import RewardEvent

UNROUTED_CONTEXT = "unrouted"  # requests that named a pool model: stored, not learned from


def load_reward_events(con: Any) -> list[RewardEvent]:
    rows = con.execute(
        """
        SELECT request_id, context, model, reward, ts, source FROM rewards
        WHERE NOT superseded AND context <> ?
        ORDER BY ts, id
        """,
        [UNROUTED_CONTEXT],
    ).fetchall()
    return [
        RewardEvent(request_id=r[0], context=r[1], model=r[2], reward=r[3], ts=r[4], source=r[5])
        for r in rows
    ]


REWARD_COLUMNS = (
    "id",
    "created_at",
    "ts",
    "request_id",
    "tenant",
    "context",
    "model",
    "reward",
    "source",
    "comment",
)


def reward_insert(
    event: RewardEvent, tenant: str | None, comment: str | None, mark: str = "?"
) -> tuple[str, str, list[Any]]:
    """``(reward id, INSERT statement, parameters)`` for one reward row; ``mark`` is the driver's
    placeholder (``?`` for DuckDB, ``%s`` for psycopg), so both stores write the same row."""
    reward_id = uuid.uuid4().hex
    sql = (
        f"INSERT INTO rewards ({', '.join(REWARD_COLUMNS)}) "
        f"VALUES ({', '.join(mark for _ in REWARD_COLUMNS)})"
    )
    return (
        reward_id,
        sql,
        [
            reward_id,
            utcnow(),
            event.ts,
            event.request_id,
            tenant,
            event.context,
            event.model,
            event.reward,
            event.source,
            comment,
        ],
    )


def insert_reward(con: Any, event: RewardEvent, tenant: str | None, comment: str | None) -> str:
    reward_id, sql, params = reward_insert(event, tenant, comment)
    con.execute(sql, params)
    return reward_id


def apply_feedback(
    con: Any, request_id: str, tenant: str | None, reward: float, comment: str | None, ts: float
) -> dict[str, Any] | None:
    """In one transaction: find the request, supersede earlier feedback, insert the new row."""
    params: list[Any] = [request_id]
    where = "id = ?"
    if tenant is not None:
        where += " AND tenant = ?"
        params.append(tenant)
    row = con.execute(
        f"SELECT model, context, tenant, cache_entry_id, cache_status FROM requests WHERE {where}", params
    ).fetchone()
    if row is None or row[0] is None:
        return None
    model, context, row_tenant, cache_entry_id, cache_status = row
    context = context or UNROUTED_CONTEXT
    con.execute("BEGIN TRANSACTION")
    try:
        earlier = con.execute(
            "SELECT request_id, context, model, reward, ts, source FROM rewards"
            " WHERE request_id = ? AND source = 'feedback' AND NOT superseded",
            [request_id],
        ).fetchall()
        con.execute(
            "UPDATE rewards SET superseded = TRUE WHERE request_id = ? AND source = 'feedback'", [request_id]
        )
        event = RewardEvent(
            request_id=request_id, context=context, model=model, reward=reward, ts=ts, source="feedback"
        )
        insert_reward(con, event, row_tenant, comment)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    replaced = [
        RewardEvent(request_id=r[0], context=r[1], model=r[2], reward=r[3], ts=r[4], source=r[5])
        for r in earlier
    ]
    return {
        "event": event,
        "replaced": replaced,
        "cache_entry_id": cache_entry_id,
        "cache_status": cache_status,
    }
