"""The fleet store on PostgreSQL (issue 14, in progress): connection, migrations, history and reward rows.

Like ``Database`` (DuckDB), one psycopg 3 connection is confined to one worker thread, so callers
await ``run(fn, ...)`` and the rest of the storage code keeps its shape. psycopg is imported lazily:
the embedded default never loads it.

Bad configuration must stop start-up with a message naming the problem and must never hang, so
``connect`` passes ``connect_timeout`` and turns libpq's errors into ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from compass.errors import ConfigError
from compass.storage.pg_migrations import migrate

T = TypeVar("T")

BACKEND = "postgresql"


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and /health."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def describe_connect_error(url: str, exc: Exception) -> str:
    """Name what is wrong (host, password, database) in terms of ``storage.url``."""
    text = str(exc).strip()
    low = text.lower()
    where = f"storage.url (COMPASS_DATABASE_URL) {redact(url)}"
    if "password authentication failed" in low or "no password supplied" in low:
        problem = "PostgreSQL refused the user name or password"
    elif "does not exist" in low and "database" in low:
        problem = "the database does not exist (create it first: createdb)"
    elif "timeout expired" in low or "timed out" in low:
        problem = "no answer from the server within storage.connect_timeout_s"
    elif any(m in low for m in ("connection refused", "resolve host", "translate host name", "no route")):
        problem = "cannot reach the PostgreSQL server (host or port wrong, or it is not running)"
    elif any(m in low for m in ("invalid response", "expected authentication request", "frontend protocol")):
        problem = "something answered on that host and port, but it is not PostgreSQL"
    elif "invalid dsn" in low or "invalid connection option" in low or "invalid integer" in low:
        problem = "the URL is malformed"
    else:
        problem = "cannot connect"
    detail = " ".join(line.strip() for line in text.splitlines()) or type(exc).__name__
    return f"{where}: {problem} ({detail})"


def connect(url: str, timeout_s: float = 5.0) -> Any:
    """An autocommit psycopg connection, or ``ConfigError`` within about ``timeout_s``."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)))
    except (psycopg.Error, ValueError) as exc:
        raise ConfigError(describe_connect_error(url, exc)) from exc


class PostgresStore:
    """One PostgreSQL connection on its own thread; the fleet counterpart of ``Database``."""

    backend = BACKEND

    def __init__(self, url: str, connect_timeout_s: float = 5.0, migrate_schema: bool = True) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.migrate_schema = migrate_schema  # False for a second connection of a process that migrated
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._con: Any = None
        self._thread_id: int | None = None

    @property
    def display(self) -> str:
        return redact(self.url)

    def open(self) -> list[str]:
        """Connect and apply migrations; returns those applied. Raises ``ConfigError`` on bad settings."""
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres")
        try:
            return self._executor.submit(self._open_in_thread).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_in_thread(self) -> list[str]:
        self._thread_id = threading.get_ident()
        self._con = connect(self.url, self.connect_timeout_s)
        return migrate(self._con) if self.migrate_schema else []

    @property
    def connection(self) -> Any:
        if self._con is None:
            raise RuntimeError("fleet store is not open")
        return self._con

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("fleet store is not open")
        if threading.get_ident() == self._thread_id:
            return fn(self.connection, *args)
        return self._executor.submit(fn, self.connection, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("fleet store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, self.connection, *args))

    def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None

        def _close() -> None:
            if self._con is not None:
                self._con.close()
                self._con = None

        executor.submit(_close).result()
        executor.shutdown(wait=True)
