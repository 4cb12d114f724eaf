"""Request and reward rows on PostgreSQL: the fleet store's counterparts of history.py and rewards.py.

Requests go in with COPY (one round trip per batch, like the DuckDB writer's one Arrow insert);
JSON columns are encoded once here. Rewards carry ``seq``, the fleet-wide order replicas follow.
"""

from __future__ import annotations

from typing import Any

import msgspec

from compass.storage.history import REQUEST_COLUMNS
from compass.storage.rewards import EVENT_COLUMNS, UNROUTED_CONTEXT, event_of, feedback_event, reward_insert
from layers.bandit.base import RewardEvent

_JSON = msgspec.json.Encoder()


def insert_requests_pg(con: Any, rows: list[dict[str, Any]]) -> None:
    """COPY the batch into ``requests`` in one transaction."""
    names = list(REQUEST_COLUMNS)
    json_cols = {n for n, kind in REQUEST_COLUMNS.items() if kind == "json"}
    with con.transaction(), con.cursor() as cur:
        with cur.copy(f"COPY requests ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                values = []
                for name in names:
                    value = row.get(name)
                    if name in json_cols and value is not None:
                        value = _JSON.encode(value).decode()
                    values.append(value)
                copy.write_row(values)


def insert_reward_pg(con: Any, event: RewardEvent, tenant: str | None, comment: str | None) -> str:
    reward_id, sql, params = reward_insert(event, tenant, comment, mark="%s")
    con.execute(sql, params)
    return reward_id


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
    con: Any, request_id: str, tenant: str | None, reward: float, comment: str | None, ts: float
) -> dict[str, Any] | None:
    """PostgreSQL's ``rewards.apply_feedback``: find the request (any replica's), supersede, insert.

    ``FOR UPDATE`` on the request row serialises two replicas taking feedback for the same request,
    so exactly one non-superseded feedback row remains.
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
        earlier = con.execute(
            "UPDATE rewards SET superseded = TRUE"
            " WHERE request_id = %s AND source = 'feedback' AND NOT superseded"
            f" RETURNING {EVENT_COLUMNS}",
            [request_id],
        ).fetchall()
        event = feedback_event(request_id, context, model, reward, ts, vector)
        insert_reward_pg(con, event, row_tenant, comment)
    replaced = [event_of(r) for r in earlier]
    return {
        "event": event,
        "replaced": replaced,
        "cache_entry_id": cache_entry_id,
        "cache_status": cache_status,
    }
