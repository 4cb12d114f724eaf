"""The history writer: request rows are queued and inserted in batches by one task.

Rows go into an asyncio queue; one writer task drains it every ``flush_interval_ms`` (or as soon
as ``batch_size`` rows wait) and inserts the batch as one Arrow table: one statement per batch,
not one per row. ``close()`` drains the queue, so after a clean stop every answered request is
in the file.

Crash bound (``kill -9``): with ``storage.durability: journal`` (the default) each row is
appended to an on-disk journal before its response is sent and batched into DuckDB as below;
rows a crash kept out of DuckDB are inserted at the next start (``compass.storage.journal``).
With ``storage.durability: strict`` a response is
released only after its row is committed: group commit, so the writer starts an insert as soon as
a durable row waits (no gather window), and rows that arrive while one insert runs go together
in the next, one transaction for all of them. Every request that got a 2xx is in the file; the
cost is one insert's latency (measured in BENCHMARKS.md). With ``durability: batched`` a handler
never waits on DuckDB, the writer gathers rows for ``flush_interval_ms``, and what a crash can lose
is what was still queued: the requests answered in the last flush interval plus the batch being
written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import msgspec

from compass.storage.db import Database

log = logging.getLogger("compass.history")

# Column name → Arrow type name; JSON columns are written as text and cast by DuckDB.
REQUEST_COLUMNS: dict[str, str] = {
    "id": "string",
    "created_at": "timestamp",
    "tenant": "string",
    "key_id": "string",
    "stream": "bool",
    "requested_model": "string",
    "model": "string",
    "litellm_model": "string",
    "routing_method": "string",
    "tier": "string",
    "context": "string",
    "task_type": "string",
    "classifier": "string",
    "scores": "json",
    "routing": "json",
    "propensity": "float64",
    "messages": "json",
    "messages_hash": "string",
    "params": "json",
    "response_content": "string",
    "finish_reason": "string",
    "prompt_tokens": "int32",
    "completion_tokens": "int32",
    "total_tokens": "int32",
    "cost_usd": "float64",
    "cache_status": "string",
    "cache_entry_id": "string",
    "cache_similarity": "float64",
    "attempts": "json",
    "classify_ms": "float64",
    "select_ms": "float64",
    "cache_ms": "float64",
    "routing_ms": "float64",
    "upstream_ms": "float64",
    "total_ms": "float64",
    "status": "int32",
    "error": "string",
    "demo": "bool",
    "embedding": "binary",  # the prompt's MiniLM vector (float32 bytes) when Layer 2 used one
}

_JSON = msgspec.json.Encoder()


def arrow_kinds() -> dict[str, Any]:
    """The Arrow type of each column kind in ``REQUEST_COLUMNS`` (JSON travels as text)."""
    import pyarrow as pa

    return {
        "string": pa.string(),
        "json": pa.string(),
        "timestamp": pa.timestamp("us"),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "int32": pa.int32(),
        "binary": pa.binary(),
    }


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = arrow_kinds()
    return pa.schema([(name, types[kind]) for name, kind in REQUEST_COLUMNS.items()])


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """Column-wise Arrow table; JSON-typed values are encoded here, off the event loop."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {}
    for name, kind in REQUEST_COLUMNS.items():
        values = [row.get(name) for row in rows]
        if kind == "json":
            values = [None if v is None else _JSON.encode(v).decode() for v in values]
        columns[name] = values
    return pa.table(columns, schema=_arrow_schema())


SMALL_BATCH = 2  # up to this many rows one VALUES insert is cheaper than building an Arrow table


def _values(row: dict[str, Any]) -> list[Any]:
    return [
        (None if row.get(name) is None else _JSON.encode(row[name]).decode())
        if kind == "json"
        else row.get(name)
        for name, kind in REQUEST_COLUMNS.items()
    ]


def insert_requests(con: Any, rows: list[dict[str, Any]]) -> None:
    """One INSERT for the batch, on its own cursor.

    Under ``durability: strict`` at low concurrency most batches hold one row, and a one-row
    Arrow insert cost ~7 ms against ~4 ms for a parameterised VALUES (measured on 2 shared cores),
    so small batches take VALUES and larger ones one Arrow table. DuckDB refuses ``register()``
    on a connection holding a half-read result (another caller's ``fetchone()``); a cursor has its
    own result state, so such a leftover cannot lose history rows.
    """
    names = ", ".join(REQUEST_COLUMNS)
    cursor = con.cursor()
    try:
        if len(rows) <= SMALL_BATCH:
            marks = "(" + ", ".join("?" for _ in REQUEST_COLUMNS) + ")"
            params = [value for row in rows for value in _values(row)]
            cursor.execute(f"INSERT INTO requests ({names}) VALUES {', '.join([marks] * len(rows))}", params)
        else:
            cursor.register("_compass_batch", rows_to_table(rows))
            cursor.execute(f"INSERT INTO requests ({names}) SELECT {names} FROM _compass_batch")
    finally:
        cursor.close()


def utcnow() -> dt.datetime:
    """Naive UTC, as DuckDB's TIMESTAMP stores it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


_STOP: dict[str, Any] = {}
_WAKE: dict[str, Any] = {}  # no row: wakes the loop (the fleet writer's retries while the store is down)


class HistoryWriter:
    def __init__(
        self,
        db: Database,
        flush_interval_ms: float = 50.0,
        batch_size: int = 512,
        insert: Any = None,  # the store's batch insert (fleet: pg_rows.insert_requests_pg)
        journal: Any = None,  # compass.storage.journal.Journal under durability: journal
    ) -> None:
        self.db = db
        self.insert_fn = insert or insert_requests
        self.journal = journal
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.batch_size = batch_size
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._queued = 0  # rows ever queued; with _processed, lets flush() wait for a fixed target
        self._processed = 0  # rows whose insert finished, stored or not
        self.written = 0
        self.failed_batches = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="compass-history-writer")

    def record(self, row: dict[str, Any], durable: bool = False) -> asyncio.Future[None] | None:
        """Queue one request row. With ``durable``, a future that resolves once it is committed."""
        future: asyncio.Future[None] | None = None
        if durable:
            future = asyncio.get_running_loop().create_future()
            row["_committed"] = future
        elif self.journal is not None:
            row["_journal"] = self.journal.append(row)  # on disk before the caller answers
        self._queue.put_nowait(row)
        self._queued += 1
        return future

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._in_flight

    def admit(self) -> None:
        """Raise (503) when a new request's row could not be kept; the fleet's spool can fill."""

    async def _before_batch(self) -> None:
        """Runs before the loop waits for the next row (the fleet writer retries the store here)."""

    def _gather_s(self, first: dict[str, Any]) -> float:
        """How long to let a batch gather after its first row.

        batched: a flush interval; strict (a response waits): write now, the rows that queue
        during this insert are the next group.
        """
        return 0 if "_committed" in first else self.flush_interval_s

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            await self._before_batch()
            first = await self._queue.get()
            if first is _WAKE:
                continue
            if first is _STOP:
                break
            self._in_flight = 1
            await asyncio.sleep(self._gather_s(first))
            batch = [first]
            while len(batch) < self.batch_size and not self._queue.empty():
                row = self._queue.get_nowait()
                if row is _WAKE:
                    continue
                if row is _STOP:
                    stopping = True
                    break
                batch.append(row)
            self._in_flight = len(batch)
            await self._write(batch)
            self._in_flight = 0

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        futures = [row.pop("_committed") for row in batch if "_committed" in row]
        journaled = [row.pop("_journal") for row in batch if "_journal" in row]
        try:
            await self._insert(batch)
        finally:
            self._processed += len(batch)
            if self.journal is not None and journaled:
                self.journal.committed(journaled)
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.db.run(self.insert_fn, batch)
            self.written += len(batch)
        except Exception:
            # A bad batch must not stop history: retry row by row, log what cannot be stored.
            self.failed_batches += 1
            log.exception("history batch of %d rows failed; retrying row by row", len(batch))
            for row in batch:
                try:
                    await self.db.run(self.insert_fn, [row])
                    self.written += 1
                except Exception:
                    log.exception("history row %s could not be stored", row.get("id"))

    async def flush(self) -> None:
        """Wait until everything queued before this call is in the database.

        Rows queued later are not waited for: under steady traffic the queue is never empty, and
        waiting for that would hold ``/stats``, SQL and ``/feedback`` until the traffic stops.
        """
        target = self._queued
        while self._processed < target and self._task is not None and not self._task.done():
            await asyncio.sleep(self.flush_interval_s / 4 or 0.001)

    async def close(self) -> None:
        """Stop the writer after it has written everything queued before this call."""
        if self._task is None:
            return
        self._queue.put_nowait(_STOP)
        await self._task
        self._task = None
        rest = []
        while not self._queue.empty():
            row = self._queue.get_nowait()
            if row is not _STOP and row is not _WAKE:
                rest.append(row)
        if rest:
            await self._write(rest)
        if self.journal is not None:
            self.journal.close()
