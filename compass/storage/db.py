"""The one read-write DuckDB connection of a server process, used from one dedicated thread.

DuckDB lets one process hold a file read-write. Confining the connection to a single worker
thread means no statement ever runs on the event loop and no two statements race; every caller
awaits ``Database.run(fn, ...)``, which runs ``fn(connection, ...)`` on that thread.
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


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._thread_id: int | None = None

    def open(self) -> list[str]:
        """Open the file (creating it), apply migrations; returns the migrations applied."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        return self._executor.submit(self._open_in_thread).result()

    def _open_in_thread(self) -> list[str]:
        self._thread_id = threading.get_ident()
        self._con = duckdb.connect(self.path)
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

        def _close() -> None:
            if self._con is not None:
                self._con.execute("CHECKPOINT")
                self._con.close()
                self._con = None

        executor.submit(_close).result()
        executor.shutdown(wait=True)
