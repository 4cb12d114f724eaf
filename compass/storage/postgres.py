"""The fleet store on PostgreSQL (issue 14, in progress): connection, migrations, history and reward rows.

Like ``Database`` (DuckDB), one psycopg 3 connection is confined to one worker thread, so callers
await ``run(fn, ...)`` and the rest of the storage code keeps its shape. psycopg is imported lazily:
the embedded default never loads it.

Bad configuration must stop start-up with a message naming the problem and must never hang, so
``connect`` passes ``connect_timeout`` and turns libpq's errors into ``ConfigError``.

After start-up the server may restart or go away. A call that finds the connection broken drops
it and raises ``StoreUnavailable``; the next call reconnects (at most one attempt per
``RECONNECT_EVERY_S``, so an outage costs callers a fast refusal, not a wait). Migrations are not
re-run on reconnect. What can wait (request rows, failure rewards) goes to the on-disk spool
(``compass.storage.spool``); what cannot (feedback's read-modify-write) answers 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from compass.errors import ConfigError, StoreUnavailable
from compass.storage.pg_migrations import migrate

T = TypeVar("T")

BACKEND = "postgresql"
RECONNECT_EVERY_S = 0.25
IDLE_CHECK_S = 5.0  # a connection idle this long is pinged before use: a restart meanwhile is no error


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
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, round(timeout_s)),
            # a server host that vanishes (no RST) is noticed in ~10 s, not after TCP's minutes
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=10_000,
        )
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
        self._next_attempt = 0.0
        self._last_used = time.monotonic()
        self.reconnects = 0
        self.last_error: str | None = None  # why the store was last unavailable (no secrets)

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
        """The live connection (reconnecting if it was lost); only on the store's own thread."""
        if self._con is not None and time.monotonic() - self._last_used > IDLE_CHECK_S:
            import psycopg

            try:
                self._con.execute("SELECT 1")
                self._last_used = time.monotonic()
            except psycopg.Error as exc:  # the server restarted while this connection sat idle
                self._drop(exc)
        if self._con is None:
            now = time.monotonic()
            if now < self._next_attempt:
                raise StoreUnavailable(f"the fleet store is unavailable ({self.last_error})")
            self._next_attempt = now + RECONNECT_EVERY_S
            try:
                self._con = connect(self.url, self.connect_timeout_s)
            except ConfigError as exc:
                self.last_error = str(exc)
                raise StoreUnavailable(f"the fleet store is unavailable ({exc})") from exc
            self.reconnects += 1
            self.last_error = None
            self._last_used = time.monotonic()
        return self._con

    @property
    def available(self) -> bool:
        return self._con is not None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        import psycopg

        con = self.connection
        try:
            result = fn(con, *args)
            self._last_used = time.monotonic()
            return result
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not con.broken and not con.closed:
                raise  # the statement failed (e.g. a lock timeout), not the connection
            self._drop(exc)
            raise StoreUnavailable(f"lost the connection to the fleet store ({self.last_error})") from exc

    def _drop(self, exc: Exception) -> None:
        self.last_error = " ".join(str(exc).split()) or type(exc).__name__
        con, self._con = self._con, None
        self._next_attempt = 0.0  # the server may already be back: the next call tries at once
        try:
            con.close()
        except Exception:
            pass

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("fleet store is not open")
        if threading.get_ident() == self._thread_id:
            return self._call(fn, *args)
        return self._executor.submit(self._call, fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("fleet store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._call, fn, *args))

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
