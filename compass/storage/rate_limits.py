"""Rate limiters for ``limits.requests_per_minute``: a token bucket per key, in memory or on the fleet store.

Both give the same bucket: capacity ``per_minute`` (a burst of one minute's budget, at least 1) and a
continuous refill of ``per_minute / 60`` tokens a second; ``take`` returns 0 when the request may go,
else the seconds until a token is there (the ``Retry-After``).

* ``LocalLimiter`` (embedded mode): the buckets live in this process.
* ``PostgresLimiter`` (fleet mode): one bucket row per key in ``rate_buckets``, taken by one call of
  the SQL function ``compass_take_token`` (pg_migrations ``m005``). The row lock serialises every
  replica and worker taking from the same key, and the refill uses the server's clock only, so the
  whole fleet shares one budget per key, not one per replica. One round trip per limited request on
  its own connection and thread, so history COPYs never queue in front of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol


class RateLimiter(Protocol):
    async def take(self, bucket: str, per_minute: float) -> float: ...

    def close(self) -> None: ...


class TokenBucket:
    """``rate`` requests per minute with a burst of the same size."""

    __slots__ = ("capacity", "rate_per_s", "tokens", "updated")

    def __init__(self, per_minute: float) -> None:
        self.capacity = max(1.0, per_minute)
        self.rate_per_s = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 if allowed, else the seconds until a token is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class LocalLimiter:
    """The buckets of one process (embedded mode: one process is the whole gateway)."""

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}

    async def take(self, bucket: str, per_minute: float) -> float:
        current = self.buckets.get(bucket)
        if current is None or current.capacity != max(1.0, per_minute):
            current = self.buckets[bucket] = TokenBucket(per_minute)
        return current.take()

    def close(self) -> None:
        self.buckets.clear()


def take_token(con: Any, bucket: str, per_minute: float) -> float:
    row = con.execute(
        "SELECT compass_take_token(%s, %s, %s)", [bucket, max(1.0, per_minute), per_minute / 60.0]
    ).fetchone()
    return float(row[0])


class PostgresLimiter:
    """The fleet's buckets in PostgreSQL, on a connection of their own (opened on first use)."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._store: Any = None
        self._opening = asyncio.Lock()

    async def take(self, bucket: str, per_minute: float) -> float:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    from compass.storage.postgres import PostgresStore

                    store = PostgresStore(self.url, self.connect_timeout_s, migrate_schema=False)
                    await asyncio.to_thread(store.open)
                    self._store = store
        return float(await self._store.run(take_token, bucket, per_minute))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def build_limiter(url: str | None, connect_timeout_s: float = 5.0) -> RateLimiter:
    """The fleet's shared buckets with ``storage.url``, else this process's."""
    return LocalLimiter() if url is None else PostgresLimiter(url, connect_timeout_s)
