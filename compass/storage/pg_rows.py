"""Request and reward rows on PostgreSQL: the fleet store's counterparts of history.py and rewards.py.

Requests go in with COPY (one round trip per batch, like the DuckDB writer's one Arrow insert);
JSON columns are encoded once here. Every reward also appends a ``reward`` event to ``fleet_events``
in its transaction, which the other replicas follow (compass/storage/fleet_log.py).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from compass.storage.fleet_log import Position, current_position, emit
from compass.storage.history import REQUEST_COLUMNS
from compass.storage.rewards import (
    EVENT_COLUMNS,
    UNROUTED_CONTEXT,
    embedding_bytes,
    event_of,
    feedback_event,
    reward_insert,
)
from layers.bandit.base import RewardEvent

_JSON = msgspec.json.Encoder()


_BATCH_TABLE = "_compass_requests_batch"


def insert_requests_pg(con: Any, rows: list[dict[str, Any]]) -> None:
    """COPY the batch in, then into ``requests`` skipping ids already there; one transaction.

    Idempotent by id (``ON CONFLICT (id) DO NOTHING``): a batch whose commit the connection lost
    before the answer, or a spool replayed after a crash (compass/storage/spool.py), is written
    again without a duplicate. COPY cannot skip conflicts, so it fills a temporary table first.
    """
    names = list(REQUEST_COLUMNS)
    columns = ", ".join(names)
    json_cols = {n for n, kind in REQUEST_COLUMNS.items() if kind == "json"}
    with con.transaction(), con.cursor() as cur:
        cur.execute(  # per connection; a reconnect starts without it
            f"CREATE TEMP TABLE IF NOT EXISTS {_BATCH_TABLE}"
            " (LIKE requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY {_BATCH_TABLE} ({columns}) FROM STDIN") as copy:
            for row in rows:
                values = []
                for name in names:
                    value = row.get(name)
                    if name in json_cols and value is not None:
                        value = _JSON.encode(value).decode()
                    values.append(value)
                copy.write_row(values)
        cur.execute(
            f"INSERT INTO requests ({columns}) SELECT {columns} FROM {_BATCH_TABLE}"
            " ON CONFLICT (id) DO NOTHING"
        )


def insert_reward_pg(
    con: Any, event: RewardEvent, tenant: str | None, comment: str | None, origin: str = ""
) -> str:
    """Insert a reward and its ``reward`` event in one transaction (other replicas follow it)."""
    with con.transaction():
        reward_id = _insert_reward(con, event, tenant, comment)
        emit(con, origin, "reward", {"event": event_json(event), "replaced": []})
    return reward_id


def _insert_reward(
    con: Any, event: RewardEvent, tenant: str | None, comment: str | None, reward_id: str | None = None
) -> str:
    reward_id, sql, params = reward_insert(event, tenant, comment, mark="%s", reward_id=reward_id)
    con.execute(sql, params)
    return reward_id


def event_json(event: RewardEvent) -> dict[str, Any]:
    """A reward event's payload; the vector (per-prompt Layer 2) as base64 of its float32 bytes."""
    vector = embedding_bytes(event.embedding)
    return {
        "request_id": event.request_id,
        "context": event.context,
        "model": event.model,
        "reward": event.reward,
        "ts": event.ts,
        "source": event.source,
        "embedding": None if vector is None else base64.b64encode(vector).decode(),
    }


def reward_event_of(payload: dict[str, Any]) -> RewardEvent:
    fields = dict(payload)
    if isinstance(fields.get("embedding"), str):
        fields["embedding"] = base64.b64decode(fields["embedding"])
    return msgspec.convert(fields, RewardEvent)


def rebuild_rewards_pg(con: Any) -> tuple[list[RewardEvent], Position]:
    """The restart fold's rewards and, in the same snapshot, where following them starts."""
    con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        events, _ = load_reward_events_pg(con)
        position = current_position(con)
    finally:
        con.execute("COMMIT")
    return events, position


def load_reward_events_pg(con: Any, after_seq: int = 0) -> tuple[list[RewardEvent], int]:
    """Rewards past ``after_seq`` in the order the DuckDB loader uses; returns them and the new watermark.

    With ``after_seq=0`` this is the restart rebuild: the same rows, the same order (``ts, id``) as
    ``load_reward_events``, so the posteriors fold identically.
    """
    rows = con.execute(
        f"SELECT {EVENT_COLUMNS}, seq FROM rewards"
        " WHERE NOT superseded AND context <> %s AND seq > %s ORDER BY ts, id",
        [UNROUTED_CONTEXT, after_seq],
    ).fetchall()
    events = [event_of(r) for r in rows]
    watermark = max((r[7] for r in rows), default=after_seq)
    return events, watermark


def apply_feedback_pg(
    con: Any,
    request_id: str,
    tenant: str | None,
    reward: float,
    comment: str | None,
    ts: float,
    origin: str = "",
    reward_id: str | None = None,
) -> dict[str, Any] | None:
    """PostgreSQL's ``rewards.apply_feedback``: find the request (any replica's), supersede, insert.

    ``FOR UPDATE`` on the request row serialises two replicas taking feedback for the same request,
    so exactly one non-superseded feedback row remains. With ``reward_id`` (feedback spooled in an
    outage, replayed by compass/storage/spool_feedback.py) a row already stored under that id means
    it was applied before: nothing changes and the answer says ``already``.
    """
    where, params = "id = %s", [request_id]
    if tenant is not None:
        where += " AND tenant = %s"
        params.append(tenant)
    with con.transaction():
        row = con.execute(
            "SELECT model, context, tenant, cache_entry_id, cache_status, embedding FROM requests"
            f" WHERE {where} FOR UPDATE",
            params,
        ).fetchone()
        if row is None or row[0] is None:
            return None
        model, context, row_tenant, cache_entry_id, cache_status, vector = row
        context = context or UNROUTED_CONTEXT
        if (
            reward_id is not None
            and con.execute("SELECT 1 FROM rewards WHERE id = %s", [reward_id]).fetchone()
        ):
            return {"already": True, "event": None, "replaced": [], "cache_entry_id": cache_entry_id}
        earlier = con.execute(
            "UPDATE rewards SET superseded = TRUE"
            " WHERE request_id = %s AND source = 'feedback' AND NOT superseded"
            f" RETURNING {EVENT_COLUMNS}",
            [request_id],
        ).fetchall()
        event = feedback_event(request_id, context, model, reward, ts, vector)
        _insert_reward(con, event, row_tenant, comment, reward_id)
        replaced = [event_of(r) for r in earlier]
        payload = {"event": event_json(event), "replaced": [event_json(e) for e in replaced]}
        emit(con, origin, "reward", payload)
    return {
        "event": event,
        "replaced": replaced,
        "cache_entry_id": cache_entry_id,
        "cache_status": cache_status,
    }
