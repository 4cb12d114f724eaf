"""Stored Responses API objects, per tenant, in the ``responses`` table.

A write goes to the database in the background; until it lands the record is served from memory,
so a client's follow-up turn (``previous_response_id``) never races the write.
"""

from __future__ import annotations

from typing import Any

import msgspec

from compass.storage.db import Database
from compass.storage.history import utcnow

_JSON = msgspec.json.Encoder()


class StoredResponse(msgspec.Struct, kw_only=True):
    id: str
    request_id: str
    tenant: str
    previous_response_id: str | None
    conversation: list[dict[str, Any]]
    response: dict[str, Any]


def _insert(con: Any, record: StoredResponse) -> None:
    con.execute(
        "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            record.id,
            record.request_id,
            record.tenant,
            utcnow(),
            record.previous_response_id,
            _JSON.encode(record.conversation).decode(),
            _JSON.encode(record.response).decode(),
        ],
    )


def _select(con: Any, resp_id: str, tenant: str) -> StoredResponse | None:
    row = con.execute(
        "SELECT id, request_id, tenant, previous_response_id, conversation, response FROM responses"
        " WHERE id = ? AND tenant = ?",
        [resp_id, tenant],
    ).fetchone()
    if row is None:
        return None
    return StoredResponse(
        id=row[0],
        request_id=row[1],
        tenant=row[2],
        previous_response_id=row[3],
        conversation=msgspec.json.decode(row[4]),
        response=msgspec.json.decode(row[5]),
    )


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.pending: dict[str, StoredResponse] = {}

    async def put(self, record: StoredResponse) -> None:
        """Write ``record``; callers spawn this so the client does not wait for it."""
        self.pending[record.id] = record
        try:
            await self.db.run(_insert, record)
        finally:
            self.pending.pop(record.id, None)

    async def get(self, resp_id: str, tenant: str) -> StoredResponse | None:
        record = self.pending.get(resp_id)
        if record is not None:
            return record if record.tenant == tenant else None
        return await self.db.run(_select, resp_id, tenant)
