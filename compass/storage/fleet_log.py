"""The fleet's change log on PostgreSQL: what one replica changed, for the others to follow.

Every change another replica must mirror in memory (a reward, a cache entry stored or evicted, a
key created or revoked) appends one ``fleet_events`` row *in the same transaction* as the change
itself and calls ``pg_notify`` there too, so PostgreSQL delivers the notification only once the
change is committed and visible. Followers LISTEN on a dedicated connection and also poll, so a
lost notification (a dropped connection) delays a change by one poll, never loses it.

Reading past a watermark is where a naive design loses rows: identities are allocated at insert,
so a transaction that inserted id 7 may commit after the one that inserted id 8, and a follower
that already moved its watermark to 8 never sees 7. ``Position`` avoids that with the
transaction snapshot instead of the identity: it keeps ``xmin``, the oldest transaction id still
running at its last read, and the ids it has already applied from transactions at or above it.
Each read takes every visible row with ``xid >= xmin``, skips those applied, then moves ``xmin``
up to the snapshot's. A transaction not yet committed at a read has an id at or above that read's
``xmin``, so its rows are read the next time; nothing is skipped and nothing is applied twice
(ops/bench/fleet_propagation.py counts what the naive watermark misses under the same load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

CHANNEL = "compass_fleet"
RETAIN_S = 3600.0  # events are pruned after this; a follower away for half of it rebuilds (resync)

_JSON = msgspec.json.Encoder()


class FleetEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    origin: str  # the replica that made the change (it has applied it already)
    kind: str  # "reward" | "keys" | "cache_put" | "cache_del"
    payload: Any


@dataclass
class Position:
    """How far a follower has read: the snapshot ``xmin`` and the ids applied at or above it."""

    xmin: int = 0
    seen: dict[int, int] = field(default_factory=dict)  # event id -> its xid (all >= xmin)


def emit(con: Any, origin: str, kind: str, payload: Any) -> int:
    """Append one event and notify, inside the caller's transaction; returns the event id."""
    event_id = con.execute(
        "INSERT INTO fleet_events (origin, kind, payload) VALUES (%s, %s, %s::jsonb) RETURNING id",
        [origin, kind, _JSON.encode(payload).decode()],
    ).fetchone()[0]
    con.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(event_id)])
    return int(event_id)


def current_position(con: Any) -> Position:
    """Where a follower starts that has just read the state in this transaction's snapshot.

    Call it inside the REPEATABLE READ transaction that loaded the state: events already
    visible there (their changes are in the loaded state) are marked applied.
    """
    xmin = int(con.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0])
    rows = con.execute(
        "SELECT id, xid::text::bigint FROM fleet_events WHERE xid >= %s::text::xid8", [str(xmin)]
    ).fetchall()
    return Position(xmin=xmin, seen={int(r[0]): int(r[1]) for r in rows})


def read_new(con: Any, position: Position) -> list[FleetEvent]:
    """Events not yet applied, in commit-safe order; advances ``position`` (one snapshot)."""
    con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        rows = con.execute(
            "SELECT id, xid::text::bigint, origin, kind, payload FROM fleet_events"
            " WHERE xid >= %s::text::xid8 ORDER BY xid, id",
            [str(position.xmin)],
        ).fetchall()
        xmin = int(con.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0])
    finally:
        con.execute("COMMIT")
    out = []
    for event_id, xid, origin, kind, payload in rows:
        if event_id in position.seen:
            continue
        position.seen[event_id] = xid
        out.append(FleetEvent(id=event_id, origin=origin, kind=kind, payload=payload))
    position.xmin = max(position.xmin, xmin)
    position.seen = {i: x for i, x in position.seen.items() if x >= position.xmin}
    return out


def prune(con: Any, retain_s: float = RETAIN_S) -> int:
    """Delete events older than ``retain_s``; returns how many."""
    cur = con.execute(
        "DELETE FROM fleet_events WHERE created_at < now() - make_interval(secs => %s)", [retain_s]
    )
    return cur.rowcount or 0
