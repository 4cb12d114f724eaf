"""DuckDB SQL over the whole fleet: a local, sandboxed DuckDB mirror of PostgreSQL's history.

DuckDB 2.x cannot load its postgres extension offline, so the mirror reads PostgreSQL itself:
``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` streams the rows, pyarrow's C++ CSV reader turns them
into Arrow record batches (block by block, so memory stays bounded), and each batch is registered
in the mirror and appended with ``INSERT OR IGNORE``. The mirror is an ordinary ``Database``: the
same DuckDB schema as the embedded file (same migrations), external access off and configuration
locked, so ``/stats``, the admin pages, ``POST /admin/api/sql``, ``compass sql`` and replay run the
same DuckDB SQL on the fleet as on one process, and the SQL sandbox is unchanged.

Incremental: PostgreSQL stamps every row with ``ingested_at`` (``now()``: its transaction's start,
on the server's one clock). A refresh reads the rows stamped after the last one it saw, less
``OVERLAP_S``, because a transaction that started earlier can commit later; re-read rows are
ignored by id. What changes after insert is replayed locally instead of re-read:

* ``rewards.superseded``: a new feedback row supersedes its request's earlier ones in the same
  PostgreSQL transaction, so the mirror marks the earlier ones when it sees the new one;
* retention (``storage.retention_days``): the same ``purge_expired`` runs on the mirror.

The file is scratch: removed at open and close, so a restart reloads from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from compass.storage.history import REQUEST_COLUMNS, arrow_kinds

T = TypeVar("T")

OVERLAP_S = 10.0  # longest writer transaction assumed (a COPY batch or a feedback takes milliseconds)
BLOCK_BYTES = 8 << 20  # CSV bytes per Arrow batch
MEMORY_LIMIT = "256MB"  # the mirror's buffer pool; it spills to its file beyond that
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

REWARD_COLUMNS: dict[str, str] = {
    "id": "string",
    "created_at": "timestamp",
    "ts": "float64",
    "request_id": "string",
    "tenant": "string",
    "context": "string",
    "model": "string",
    "reward": "float64",
    "source": "string",
    "comment": "string",
    "superseded": "bool",
}
# The prompt vectors (binary columns) stay in PostgreSQL: SQL analysis has no use for them, and
# they would make up most of the mirror; the mirror's ``embedding`` columns stay NULL.
TABLES = {
    "requests": {name: kind for name, kind in REQUEST_COLUMNS.items() if kind != "binary"},
    "rewards": REWARD_COLUMNS,
}


def _arrow_types(columns: dict[str, str]) -> dict[str, Any]:
    import pyarrow as pa

    kinds = arrow_kinds()
    types = {name: kinds[kind] for name, kind in columns.items()}
    types["ingested_at"] = pa.timestamp("us")  # naive UTC: to_char below
    return types


class _CopyStream(io.RawIOBase):
    """The chunks of a psycopg ``COPY ... TO STDOUT`` as a file, for pyarrow's streaming reader."""

    def __init__(self, chunks: Iterator[Any], first: bytes = b"") -> None:
        self._chunks = chunks
        self._buffer = first

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        """Fill ``target`` (pyarrow makes a block of each read; psycopg yields a row per chunk)."""
        view = memoryview(target).cast("B")
        filled = 0
        while filled < len(view):
            if not self._buffer:
                try:
                    self._buffer = bytes(next(self._chunks))
                except StopIteration:
                    break
                continue
            n = min(len(view) - filled, len(self._buffer))
            view[filled : filled + n] = self._buffer[:n]
            self._buffer = self._buffer[n:]
            filled += n
        return filled


def copy_batches(pg: Any, table: str, since: dt.datetime) -> Iterator[Any]:
    """Arrow record batches of ``table``'s rows stamped after ``since`` (oldest first)."""
    from pyarrow import csv

    columns = TABLES[table]
    names = [*columns, "ingested_at"]
    select = ", ".join(
        "to_char(ingested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS ingested_at"
        if n == "ingested_at"
        else n
        for n in names
    )
    sql = f"COPY (SELECT {select} FROM {table} WHERE ingested_at > %s) TO STDOUT (FORMAT csv)"
    types = _arrow_types(columns)
    with pg.cursor() as cur, cur.copy(sql, [since]) as copy:
        chunks = iter(copy)
        first = next(chunks, None)
        if first is None:  # nothing new (pyarrow refuses an empty stream)
            return
        reader = csv.open_csv(
            _CopyStream(chunks, bytes(first)),
            read_options=csv.ReadOptions(column_names=names, block_size=BLOCK_BYTES, use_threads=False),
            parse_options=csv.ParseOptions(newlines_in_values=True),
            convert_options=csv.ConvertOptions(
                column_types=types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        yield from reader


def apply_batch(con: Any, table: str, batch: Any) -> dt.datetime | None:
    """Append one Arrow batch to the mirror's ``table``; returns the newest ``ingested_at`` in it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return None
    names = ", ".join(TABLES[table])
    con.register("_fleet_batch", pa.Table.from_batches([batch]))
    try:
        con.execute(f"INSERT OR IGNORE INTO {table} ({names}) SELECT {names} FROM _fleet_batch")
        if table == "rewards":  # feedback in this batch superseded its request's earlier feedback
            con.execute(
                "UPDATE rewards SET superseded = b.superseded FROM _fleet_batch b"
                " WHERE rewards.id = b.id AND rewards.superseded <> b.superseded"
            )
            con.execute(
                "UPDATE rewards SET superseded = TRUE WHERE source = 'feedback' AND NOT superseded"
                " AND request_id IN (SELECT request_id FROM _fleet_batch WHERE source = 'feedback')"
                " AND id NOT IN (SELECT id FROM _fleet_batch)"
            )
    finally:
        con.unregister("_fleet_batch")
    newest = pc.max(batch.column("ingested_at")).as_py()
    return newest.replace(tzinfo=dt.UTC) if newest is not None else None


class FleetAnalysis:
    """``run`` / ``analyse`` like ``Database``, on a mirror refreshed from PostgreSQL first."""

    def __init__(
        self,
        url: str,
        path: str | Path,
        connect_timeout_s: float = 5.0,
        retention_days: float | None = None,
        store_content: str = "full",
    ) -> None:
        self.url = url
        self.path = str(path)
        self.connect_timeout_s = connect_timeout_s
        self.retention_s = retention_days * 86400 if retention_days else None
        self.store_content = store_content
        self.watermarks = {table: EPOCH for table in TABLES}
        self.rows_loaded = 0
        self._db: Any = None
        self._pg: Any = None
        self._opening = asyncio.Lock()

    def open_sync(self) -> None:
        from compass.storage.db import Database
        from compass.storage.postgres import connect

        self._remove_files()
        db = Database(self.path, config={"memory_limit": MEMORY_LIMIT, "threads": 1})
        db.open()
        try:
            self._pg = db.run_sync(lambda _: connect(self.url, self.connect_timeout_s))
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _ensure_open(self) -> Any:
        if self._db is None:
            async with self._opening:
                if self._db is None:
                    await asyncio.to_thread(self.open_sync)
        return self._db

    def refresh_sync(self, con: Any) -> int:
        """Pull what PostgreSQL has that the mirror lacks (on the mirror's thread); returns rows read."""
        read = 0
        for table in TABLES:
            since = self.watermarks[table] - dt.timedelta(seconds=OVERLAP_S)
            since = max(since, EPOCH)
            for batch in copy_batches(self._pg, table, since):
                read += batch.num_rows
                newest = apply_batch(con, table, batch)
                if newest is not None and newest > self.watermarks[table]:
                    self.watermarks[table] = newest
        if self.retention_s is not None:  # what PostgreSQL's purge removed must not live on here
            from compass.storage.history import utcnow
            from compass.storage.retention import purge_expired

            purge_expired(con, utcnow() - dt.timedelta(seconds=self.retention_s), self.store_content)
        self.rows_loaded += read
        return read

    async def refresh(self) -> int:
        db = await self._ensure_open()
        return int(await db.run(self.refresh_sync))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        db = await self._ensure_open()
        await db.run(self.refresh_sync)
        return await db.run(fn, *args)

    async def analyse(self, fn: Callable[..., T], *args: Any) -> T:
        db = await self._ensure_open()
        await db.run(self.refresh_sync)
        return await db.analyse(fn, *args)

    def sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For the CLI: open, refresh and run ``fn(con, *args)`` without an event loop."""
        if self._db is None:
            self.open_sync()
        self._db.run_sync(self.refresh_sync)
        return self._db.run_sync(fn, *args)

    def close(self) -> None:
        if self._db is not None:
            pg, self._pg = self._pg, None
            if pg is not None:
                self._db.run_sync(lambda _: pg.close())
            self._db.close()
            self._db = None
        self._remove_files()

    def _remove_files(self) -> None:
        if self.path == ":memory:":
            return
        for suffix in ("", ".wal"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass


def open_analysis(settings: Any, db: Any) -> Any:
    """Where analysis reads: the embedded DuckDB file itself, or the fleet's mirror (opened on first use)."""
    storage = settings.storage
    if storage.url is None:
        return db
    return FleetAnalysis(
        storage.url,
        settings.home_path / "fleet-analysis.duckdb",
        storage.connect_timeout_s,
        storage.retention_days,
        storage.store_content,
    )


def query_fleet(url: str, fn: Callable[..., T], *args: Any, connect_timeout_s: float = 5.0) -> T:
    """One shot (``compass sql``, ``compass replay --history``): ``fn(con, *args)`` on a temp mirror."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="compass-fleet-") as tmp:
        mirror = FleetAnalysis(url, Path(tmp) / "mirror.duckdb", connect_timeout_s)
        try:
            return mirror.sync(fn, *args)
        finally:
            mirror.close()
