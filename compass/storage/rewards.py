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


# The columns a RewardEvent is read back from, in its fields' order (both stores).
EVENT_COLUMNS = "request_id, context, model, reward, ts, source, embedding"


def event_of(row: Any) -> RewardEvent:
    """A ``RewardEvent`` from a row of ``EVENT_COLUMNS`` (the embedding as float32 bytes or None)."""
    vector = None if row[6] is None else bytes(row[6])
    return RewardEvent(
        request_id=row[0],
        context=row[1],
        model=row[2],
        reward=row[3],
        ts=row[4],
        source=row[5],
        embedding=vector,
    )


def embedding_bytes(value: Any) -> bytes | None:
    """The float32 bytes stored for a vector (an array, a list or bytes); None if absent."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    import numpy as np

    return np.ascontiguousarray(value, dtype=np.float32).reshape(-1).tobytes()


def load_reward_events(con: Any) -> list[RewardEvent]:
    rows = con.execute(
        f"""
        SELECT {EVENT_COLUMNS} FROM rewards
        WHERE NOT superseded AND context <> ?
        ORDER BY ts, id
        """,
        [UNROUTED_CONTEXT],
    ).fetchall()
    return [event_of(r) for r in rows]


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
    "embedding",
)


def reward_insert(
    event: RewardEvent, tenant: str | None, comment: str | None, mark: str = "?", reward_id: str | None = None
) -> tuple[str, str, list[Any]]:
    """``(reward id, INSERT statement, parameters)`` for one reward row; ``mark`` is the driver's
    placeholder (``?`` for DuckDB, ``%s`` for psycopg), so both stores write the same row.
    ``reward_id``: an id chosen earlier (feedback spooled in an outage keeps its id for replay)."""
    reward_id = reward_id or uuid.uuid4().hex
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
            embedding_bytes(event.embedding),
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
        f"SELECT model, context, tenant, cache_entry_id, cache_status, embedding FROM requests WHERE {where}",
        params,
    ).fetchone()
    if row is None or row[0] is None:
        return None
    model, context, row_tenant, cache_entry_id, cache_status, vector = row
    context = context or UNROUTED_CONTEXT
    con.execute("BEGIN TRANSACTION")
    try:
        earlier = con.execute(
            f"SELECT {EVENT_COLUMNS} FROM rewards"
            " WHERE request_id = ? AND source = 'feedback' AND NOT superseded",
            [request_id],
        ).fetchall()
        con.execute(
            "UPDATE rewards SET superseded = TRUE WHERE request_id = ? AND source = 'feedback'", [request_id]
        )
        event = feedback_event(request_id, context, model, reward, ts, vector)
        insert_reward(con, event, row_tenant, comment)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    replaced = [event_of(r) for r in earlier]
    return {
        "event": event,
        "replaced": replaced,
        "cache_entry_id": cache_entry_id,
        "cache_status": cache_status,
    }


def feedback_event(
    request_id: str, context: str, model: str, reward: float, ts: float, vector: Any
) -> RewardEvent:
    return RewardEvent(
        request_id=request_id,
        context=context,
        model=model,
        reward=reward,
        ts=ts,
        source="feedback",
        embedding=None if vector is None else bytes(vector),
    )
