"""The one read-write DuckDB connection of a server process, used from one dedicated thread.

DuckDB lets one process hold a file read-write. Confining the connection to a single worker
thread means no statement ever runs on the event loop and no two statements race; every caller
awaits ``Database.run(fn, ...)``, which runs ``fn(connection, ...)`` on that thread.

The instance is opened with external access off and its configuration locked (``SANDBOX``): the
server never reads other files through DuckDB, and ``POST /admin/api/sql`` runs on a cursor of
this same instance (a second instance cannot open a file this one holds, nor a second connection
differ in these settings), so no query can reach the file system, the network, extensions or
``SET`` them back on. Analysis queries run on their own thread (``Database.analyse``): DuckDB's
MVCC lets a cursor read while the writer commits, so a long query does not hold up responses
that wait for their history row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from compass.storage.migrations import migrate

T = TypeVar("T")

SANDBOX = {"enable_external_access": False, "lock_configuration": True}


class Database:
    def __init__(self, path: str | Path, config: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.config = {**(config or {}), **SANDBOX}  # e.g. memory_limit; the sandbox always applies
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._thread_id: int | None = None
        self._analysis: concurrent.futures.ThreadPoolExecutor | None = None

    def open(self) -> list[str]:
        """Open the file (creating it), apply migrations; returns the migrations applied."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        return self._executor.submit(self._open_in_thread).result()

    def _open_in_thread(self) -> list[str]:
        self._thread_id = threading.get_ident()
        self._con = duckdb.connect(self.path, config=dict(self.config))
        return migrate(self._con)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("database is not open")
        return self._con

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(con, *args)`` on the database thread and wait (for CLI and start-up code)."""
        if self._executor is None:
            raise RuntimeError("database is not open")
        if threading.get_ident() == self._thread_id:
            return fn(self.connection, *args)
        return self._executor.submit(fn, self.connection, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(con, *args)`` on the database thread without blocking the event loop."""
        if self._executor is None:
            raise RuntimeError("database is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, self.connection, *args))

    async def analyse(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` on a fresh cursor, on the analysis thread, not the writer's."""
        if self._executor is None:
            raise RuntimeError("database is not open")
        if self._analysis is None:
            self._analysis = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duckdb-sql")
        cursor = await self.run(lambda con: con.cursor())

        def _in_cursor() -> T:
            try:
                return fn(cursor, *args)
            finally:
                cursor.close()

        return await asyncio.get_running_loop().run_in_executor(self._analysis, _in_cursor)

    async def fetch(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run a query; return ``(column names, rows)``."""

        def _query(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
            cur = con.execute(sql, params or [])
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, cur.fetchall()

        return await self.run(_query)

    def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        if self._analysis is not None:
            self._analysis.shutdown(wait=True)
            self._analysis = None

        def _close() -> None:
            if self._con is not None:
                self._con.execute("CHECKPOINT")
                self._con.close()
                self._con = None

        executor.submit(_close).result()
        executor.shutdown(wait=True)
