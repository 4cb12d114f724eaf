"""Stored Responses API objects, per tenant, in the ``responses`` table.

Writes go to the database in the background, batched (one Arrow-table INSERT per ``BATCH_WINDOW_S``:
one statement per response cost ~1 ms p50 at concurrency 1 in ``ops/bench/overhead --apis``);
until a record lands it is served from memory, so a follow-up turn (``previous_response_id``)
never races the write.

In fleet mode (``storage.url``) the table is PostgreSQL's, so a follow-up turn or a ``GET`` may
reach any replica or worker; ``ResponseStore`` picks the statements by the store's backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from compass.storage.db import Database
from compass.storage.history import utcnow

_JSON = msgspec.json.Encoder()
BATCH_WINDOW_S = 0.05


class StoredResponse(msgspec.Struct, kw_only=True):
    id: str
    request_id: str
    tenant: str
    previous_response_id: str | None
    conversation: list[dict[str, Any]]
    response: dict[str, Any]


def _insert(con: Any, records: list[StoredResponse]) -> None:
    """One INSERT per batch from an Arrow table (DuckDB's executemany costs a statement per row)."""
    import pyarrow as pa

    now = utcnow()
    table = pa.table(
        {
            "id": [r.id for r in records],
            "request_id": [r.request_id for r in records],
            "tenant": [r.tenant for r in records],
            "created_at": pa.array([now] * len(records), pa.timestamp("us")),
            "previous_response_id": pa.array([r.previous_response_id for r in records], pa.string()),
            "conversation": [_JSON.encode(r.conversation).decode() for r in records],
            "response": [_JSON.encode(r.response).decode() for r in records],
        }
    )
    cursor = con.cursor()  # its own result state, as the history writer does
    try:
        cursor.register("_compass_responses", table)
        cursor.execute("INSERT OR REPLACE INTO responses SELECT * FROM _compass_responses")
    finally:
        cursor.close()


def _insert_pg(con: Any, records: list[StoredResponse]) -> None:
    now = utcnow()
    rows = [
        [
            r.id,
            r.request_id,
            r.tenant,
            now,
            r.previous_response_id,
            _JSON.encode(r.conversation).decode(),
            _JSON.encode(r.response).decode(),
        ]
        for r in records
    ]
    with con.transaction(), con.cursor() as cur:
        cur.executemany(
            "INSERT INTO responses (id, request_id, tenant, created_at, previous_response_id,"
            " conversation, response) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET conversation = EXCLUDED.conversation,"
            " response = EXCLUDED.response",
            rows,
        )


def _select_pg(con: Any, resp_id: str, tenant: str) -> StoredResponse | None:
    return _select(con, resp_id, tenant, mark="%s")


def _select(con: Any, resp_id: str, tenant: str, mark: str = "?") -> StoredResponse | None:
    row = con.execute(
        "SELECT id, request_id, tenant, previous_response_id, conversation, response FROM responses"
        f" WHERE id = {mark} AND tenant = {mark}",
        [resp_id, tenant],
    ).fetchone()
    if row is None:
        return None
    return StoredResponse(
        id=row[0],
        request_id=row[1],
        tenant=row[2],
        previous_response_id=row[3],
        conversation=_decoded(row[4]),
        response=_decoded(row[5]),
    )


def _decoded(value: Any) -> Any:
    """DuckDB hands JSON back as text, psycopg hands jsonb back decoded."""
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


class ResponseStore:
    def __init__(
        self,
        db: Database | Any,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Future[None]] | None = None,
    ) -> None:
        """``spawn`` runs the flush as the gateway's background work (awaited at stop)."""
        self.db = db
        fleet = getattr(db, "backend", "duckdb") == "postgresql"
        self._insert, self._select = (_insert_pg, _select_pg) if fleet else (_insert, _select)
        self.spawn = spawn or asyncio.ensure_future
        self.pending: dict[str, StoredResponse] = {}
        self._queue: list[StoredResponse] = []
        self._flushing: asyncio.Future[None] | None = None

    def put(self, record: StoredResponse) -> asyncio.Future[None]:
        """Queue ``record``; the returned future resolves once its batch is written."""
        self.pending[record.id] = record
        self._queue.append(record)
        if self._flushing is None:
            self._flushing = self.spawn(self._flush_soon())
        return self._flushing

    async def _flush_soon(self) -> None:
        await asyncio.sleep(BATCH_WINDOW_S)
        batch, self._queue, self._flushing = self._queue, [], None
        try:
            await self.db.run(self._insert, batch)
        finally:
            for record in batch:
                if self.pending.get(record.id) is record:
                    del self.pending[record.id]

    async def get(self, resp_id: str, tenant: str) -> StoredResponse | None:
        record = self.pending.get(resp_id)
        if record is not None:
            return record if record.tenant == tenant else None
        return await self.db.run(self._select, resp_id, tenant)
