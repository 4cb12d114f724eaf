"""History retention: content older than ``storage.retention_days`` is removed, the numbers stay.

For every request row whose ``created_at`` is older than the cutoff, one transaction sets:

    requests.messages          NULL   (the prompt; ``messages_hash`` is kept)
    requests.params            NULL   (tools, response_format, metadata, prediction text...)
    requests.response_content  NULL with ``store_content: full``; with ``store_content: hash`` its
                               ``sha256:<hex>`` (rows written as hashes already are left as they are)
    rewards.comment            NULL   (free-text feedback; the reward itself is kept)
    responses                  deleted (stored Responses API objects hold the whole conversation)

Everything else stays: ids, timestamps, tenant, key, models, routing, tokens, cost, latencies,
status, error and ``messages_hash``, so ``/stats``, the admin timeline and savings still count old
requests, and the ``rewards`` rows (Layer 2's event log) still rebuild the bandit exactly.
Cached answers (``cache_entries``) belong to Layer 3: when the cache offers
``evict_older_than(epoch_s)`` it is called with the same cutoff.

The purge runs shortly after start-up and then periodically (every 1/24 of the retention period,
between one minute and one hour); it is idempotent, so a restart or an overlap does no harm.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, Protocol

from compass.storage.history import utcnow

if TYPE_CHECKING:
    from compass.config import Settings
    from compass.storage.db import Database


class RetentionSources(Protocol):
    """What the purge needs from the gateway (``Services`` is one); storage never imports it."""

    settings: Settings
    db: Database | None
    cache: Any
    rows: Any  # compass.storage.backend.RowStore: PostgreSQL's rows are purged there too


log = logging.getLogger("compass.retention")

MIN_INTERVAL_S = 60.0
MAX_INTERVAL_S = 3600.0


def _count(con: Any, sql: str, params: list[Any]) -> int:
    row = con.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def purge_expired(con: Any, cutoff: dt.datetime, store_content: str = "full") -> dict[str, int]:
    """Strip content from rows created before ``cutoff`` (naive UTC); returns rows changed per column."""
    con.execute("BEGIN TRANSACTION")
    try:
        changed = {
            "messages": _count(
                con,
                "UPDATE requests SET messages = NULL WHERE created_at < ? AND messages IS NOT NULL",
                [cutoff],
            ),
            "params": _count(
                con, "UPDATE requests SET params = NULL WHERE created_at < ? AND params IS NOT NULL", [cutoff]
            ),
        }
        if store_content == "hash":
            changed["response_content"] = _count(
                con,
                "UPDATE requests SET response_content = 'sha256:' || sha256(response_content)"
                " WHERE created_at < ? AND response_content IS NOT NULL"
                " AND NOT starts_with(response_content, 'sha256:')",
                [cutoff],
            )
        else:
            changed["response_content"] = _count(
                con,
                "UPDATE requests SET response_content = NULL"
                " WHERE created_at < ? AND response_content IS NOT NULL",
                [cutoff],
            )
        changed["comments"] = _count(
            con, "UPDATE rewards SET comment = NULL WHERE created_at < ? AND comment IS NOT NULL", [cutoff]
        )
        changed["responses"] = _count(con, "DELETE FROM responses WHERE created_at < ?", [cutoff])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return changed


def purge_expired_pg(con: Any, cutoff: dt.datetime, store_content: str = "full") -> dict[str, int]:
    """``purge_expired`` on the fleet store's tables (same columns, same result)."""
    if store_content == "hash":
        content = (
            "UPDATE requests SET response_content = 'sha256:' || encode(sha256(convert_to(response_content,"
            " 'UTF8')), 'hex') WHERE created_at < %s AND response_content IS NOT NULL"
            " AND NOT starts_with(response_content, 'sha256:')"
        )
    else:
        content = (
            "UPDATE requests SET response_content = NULL WHERE created_at < %s AND "
            + "response_content IS NOT NULL"
        )
    statements = {
        "messages": "UPDATE requests SET messages = NULL WHERE created_at < %s AND messages IS NOT NULL",
        "params": "UPDATE requests SET params = NULL WHERE created_at < %s AND params IS NOT NULL",
        "response_content": content,
        "comments": "UPDATE rewards SET comment = NULL WHERE created_at < %s AND comment IS NOT NULL",
    }
    statements["responses"] = "DELETE FROM responses WHERE created_at < %s"  # whole conversations
    with con.transaction():
        return {name: con.execute(sql, [cutoff]).rowcount for name, sql in statements.items()}


class RetentionTask:
    """The periodic purge for one gateway; does nothing when ``retention_days`` is not set."""

    def __init__(self, services: RetentionSources, interval_s: float | None = None) -> None:
        self.services = services
        days = services.settings.storage.retention_days
        self.retention_s = float(days) * 86400 if days is not None and days > 0 else None
        if interval_s is None and self.retention_s is not None:
            interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, self.retention_s / 24))
        self.interval_s = interval_s
        self.last_run: dt.datetime | None = None
        self.last_result: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RetentionTask:
        if self.retention_s is not None and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="compass-retention")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def run_once(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Purge once against ``now`` (naive UTC, default the current time)."""
        assert self.retention_s is not None and self.services.db is not None
        cutoff = (now or utcnow()) - dt.timedelta(seconds=self.retention_s)
        store = self.services.settings.storage.store_content
        result = await self.services.db.run(purge_expired, cutoff, store)
        rows = getattr(self.services, "rows", None)
        if rows is not None and rows.backend == "postgresql":  # fleet: the rows are there, not in db
            for name, n in (await rows.run(purge_expired_pg, cutoff, store)).items():
                result[name] = result.get(name, 0) + n
        evict = getattr(self.services.cache, "evict_older_than", None)
        if evict is not None:
            result["cache_entries"] = int(await evict(cutoff.replace(tzinfo=dt.UTC).timestamp()))
        self.last_run, self.last_result = utcnow(), result
        if any(result.values()):
            log.info("retention: purged content older than %s: %s", cutoff.isoformat(" ", "seconds"), result)
        return result

    async def _loop(self) -> None:
        assert self.interval_s is not None
        while True:
            try:
                await self.run_once()
            except Exception:  # a failed purge is retried next period; it never stops the server
                log.exception("retention purge failed")
            await asyncio.sleep(self.interval_s)
