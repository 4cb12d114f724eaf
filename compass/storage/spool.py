"""The fleet store's outage spool: rows wait on local disk while PostgreSQL is away.

``FleetWriter`` is the history writer of a replica on ``storage.url``. Request rows (and failure
rewards) go to PostgreSQL in batches as in embedded mode. When the store stops answering
(``StoreUnavailable``: a restart, a failover, a network cut) the writer keeps serving:

* every row that waits is on disk, in the journal's segments under ``<home>/spool/``. Under
  ``durability: journal`` (the default) each row was appended before its response was sent;
  under ``batched`` rows are appended when the outage is noticed and while it lasts; under
  ``strict`` a response needs the store's commit, so new requests are refused (503) and a row
  whose commit failed is spooled while its client gets a 503;
* the writer keeps nothing in memory for an outage: rows are dropped from the queue once on disk;
* every ``retry_s`` it pings the store; once it answers, the open segment is closed (rotated)
  and every closed segment is replayed from disk in order, then removed. Inserts are idempotent
  by id (``ON CONFLICT DO NOTHING``), so a segment cut short by a second failure, or a replica
  killed mid-replay, is replayed again without duplicating a row;
* ``/health`` says ``degraded`` (``storage.spool``) until the replay has finished;
* the spool is bounded (``storage.spool_max_mb``). Past the bound new requests are refused with a
  503 (``SpoolFull``) rather than rows being dropped; requests already admitted still spool;
* feedback for a request this replica served waits in the same spool and is applied once after
  reconnect, with the live path's locked read-modify-write (compass/storage/spool_feedback.py).

A replica killed (``kill -9``) while the store is down keeps its spool: the next start replays
it before serving (``recover_spool``), as the embedded journal's recovery does for DuckDB.

Layout: ``<spool root>/<host>-<pid>-<time>/`` per process, holding an ``flock`` on its
``owner.lock`` while it lives (the kernel drops it when the process dies, ``kill -9`` included).
A starting process replays and removes every directory whose lock it can take, and skips those a
live process holds, so several processes may share one spool root (``--workers``, or
``storage.spool_dir`` pointing several homes at one disk) without replaying each other's rows
twice or losing a dead one's.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from compass.errors import SpoolFull, StoreUnavailable
from compass.storage.history import _WAKE, REQUEST_COLUMNS, HistoryWriter
from compass.storage.journal import SEGMENT_BYTES, Journal, read_rows, segment_number, segments
from compass.storage.pg_rows import insert_requests_pg
from compass.storage.rewards import REWARD_COLUMNS, reward_insert
from compass.storage.spool_feedback import FEEDBACK_KIND, Applied, RecentRequests, apply_spooled_feedback

log = logging.getLogger("compass.spool")

REWARD_KIND = "reward"  # a spooled reward line: {"kind": "reward", "row": [REWARD_COLUMNS values]}
TIMESTAMPS = tuple(name for name, kind in REQUEST_COLUMNS.items() if kind == "timestamp")
BINARY = tuple(name for name, kind in REQUEST_COLUMNS.items() if kind == "binary")  # base64 on disk
_EVENT_FIELDS = ("request_id", "context", "model", "reward", "ts", "source", "embedding")
_REWARD_BINARY = tuple(i for i, name in enumerate(REWARD_COLUMNS) if name == "embedding")


LOCK = "owner.lock"


def spool_path(settings: Any) -> Path:
    """The spool root: ``storage.spool_dir`` (relative to home), else ``<home>/spool``."""
    configured = getattr(settings.storage, "spool_dir", None)
    if not configured:
        return settings.home_path / "spool"
    path = Path(configured).expanduser()
    return path if path.is_absolute() else settings.home_path / path


def claim(directory: Path) -> int | None:
    """An exclusive ``flock`` on the directory's lock file (its descriptor); None if a live process has it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


Split = tuple[list[dict[str, Any]], list[list[Any]], list[dict[str, Any]]]


def _split(items: list[dict[str, Any]]) -> Split:
    """Request rows, reward rows and feedback lines, each in spool order."""
    requests: list[dict[str, Any]] = []
    rewards: list[list[Any]] = []
    feedback: list[dict[str, Any]] = []
    for item in items:
        if item.get("kind") == FEEDBACK_KIND:
            feedback.append(item)
        elif item.get("kind") == REWARD_KIND:
            row = list(item["row"])
            row += [None] * (len(REWARD_COLUMNS) - len(row))  # a spool from before a column was added
            if isinstance(row[1], str):  # created_at, as JSON wrote it
                row[1] = dt.datetime.fromisoformat(row[1])
            for i in _REWARD_BINARY:  # the vector, as base64
                if i < len(row) and isinstance(row[i], str):
                    row[i] = base64.b64decode(row[i])
            rewards.append(row)
        else:
            requests.append(item)
    return requests, rewards, feedback


def insert_reward_rows_pg(con: Any, rows: list[list[Any]], origin: str = "") -> None:
    """Reward rows made by ``reward_insert`` (the spool keeps their ids), idempotent by id.

    Each row actually inserted appends its ``reward`` event in the same transaction, as a live
    insert does, so the other replicas' posteriors follow a reward that waited out an outage.
    """
    if not rows:
        return
    from compass.storage.fleet_log import emit
    from compass.storage.pg_rows import event_json
    from layers.bandit.base import RewardEvent

    marks = "(" + ", ".join("%s" for _ in REWARD_COLUMNS) + ")"
    sql = (
        f"INSERT INTO rewards ({', '.join(REWARD_COLUMNS)}) VALUES {marks}"
        " ON CONFLICT (id) DO NOTHING RETURNING id"
    )
    at = {name: i for i, name in enumerate(REWARD_COLUMNS)}
    with con.transaction():
        for row in rows:
            if con.execute(sql, row).fetchone() is None:
                continue  # written before (a segment replayed twice)
            event = RewardEvent(**{k: row[at[k]] for k in _EVENT_FIELDS})
            emit(con, origin, "reward", {"event": event_json(event), "replaced": []})


def write_items(
    con: Any,
    requests: list[dict[str, Any]],
    rewards: list[list[Any]],
    feedback: list[dict[str, Any]],
    origin: str = "",
) -> list[Applied]:
    """Requests first: a feedback line's request row precedes it in the spool, maybe in this batch."""
    if requests:
        insert_requests_pg(con, requests)
    if rewards:
        insert_reward_rows_pg(con, rewards, origin)
    return apply_spooled_feedback(con, feedback, origin) if feedback else []


def replay_segment(
    con: Any, path: Path, batch_size: int = 512, origin: str = "", applied: list[Applied] | None = None
) -> int:
    """Write one segment's rows to PostgreSQL (idempotent); returns how many lines it held.

    ``applied`` collects the spooled feedback written (the live writer settles it in memory).
    """
    if not path.exists():
        return 0
    items = read_rows(path, TIMESTAMPS, BINARY)
    for start in range(0, len(items), batch_size):
        done = write_items(con, *_split(items[start : start + batch_size]), origin)
        if applied is not None:
            applied.extend(done)
    return len(items)


def recover_spool(store: Any, root: Path, origin: str = "") -> int:
    """At start-up: replay what dead processes left under ``root`` (a crash, or a stop while down)."""
    if not root.is_dir():
        return 0
    total = 0
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        fd = claim(directory)
        if fd is None:
            continue  # a live process's spool: it writes its own rows
        try:
            for path in segments(directory):
                total += store.run_sync(replay_segment, path, 512, origin)
                path.unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(fd)
    if total:
        log.warning("spool: wrote %d rows that an earlier run had spooled to %s", total, store.display)
    return total


def _ping(con: Any) -> None:
    con.execute("SELECT 1").fetchone()


class FleetWriter(HistoryWriter):
    """The history writer on PostgreSQL, with the on-disk spool for outages."""

    def __init__(
        self,
        store: Any,
        spool: Journal,
        durability: str = "journal",
        max_bytes: int = 256 * 1024 * 1024,
        flush_interval_ms: float = 50.0,
        batch_size: int = 512,
        retry_s: float = 0.5,
        origin: str = "",
    ) -> None:
        super().__init__(store, flush_interval_ms, batch_size, insert=insert_requests_pg)
        self.origin = origin  # this replica's name on the reward events a replayed row appends
        self.spool = spool
        self.durability = durability
        self.max_bytes = max_bytes
        self.retry_s = retry_s
        self.down_since: float | None = None
        self.down_reason: str | None = None
        self.outages = 0
        self.spooled = 0  # rows that waited on disk for the store, over this run
        self.replayed = 0  # lines replayed from disk after an outage
        self._skip_through = 0  # rows of segments up to this one were replayed: skip them in the queue
        self._next_try = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self.lock_fd: int | None = None  # this process's claim on its spool directory
        self.recent = RecentRequests()  # what feedback needs of this process's requests, store or not
        self.feedback_spooled = 0
        self.feedback_applied = 0  # spooled feedback written to the store (at most once each)
        self.on_feedback: Any = None  # Callable[[list[Applied]], None]: the pipeline settles memory

    # --- what handlers call -------------------------------------------------------------
    def admit(self) -> None:
        """Before a request is served: refuse it (503) when its row could not be kept."""
        if self.spool.bytes >= self.max_bytes:
            raise SpoolFull(
                f"The fleet store is unreachable and this replica's spool is full "
                f"({self.spool.bytes} of {self.max_bytes} bytes, storage.spool_max_mb); retry shortly."
            )
        if self.down_since is not None and self.durability == "strict":
            raise StoreUnavailable(
                "The fleet store is unreachable and storage.durability is strict: requests wait for it."
            )

    def record(self, row: dict[str, Any], durable: bool = False) -> asyncio.Future[None] | None:
        future: asyncio.Future[None] | None = None
        if durable:
            future = asyncio.get_running_loop().create_future()
            row["_committed"] = future
        row["_recent"] = self.recent.note(row)
        if self.down_since is not None or (self.durability == "journal" and not durable):
            self._append(row)
        self._queue.put_nowait(row)
        self._queued += 1
        return future

    def record_reward(self, event: Any, tenant: str | None, comment: str | None = None) -> str:
        """A reward that can wait (a failure's zero): on disk at once, written with the next batch."""
        reward_id, _, params = reward_insert(event, tenant, comment, mark="%s")
        item: dict[str, Any] = {"kind": REWARD_KIND, "row": params}
        self._append(item)
        self._queue.put_nowait(item)
        self._queued += 1
        return reward_id

    def record_feedback(self, item: dict[str, Any]) -> None:
        """Feedback accepted while the store is away: on disk before its answer, applied later."""
        self.recent.spooled(item["reward_id"], item["request_id"])
        self._append(item)
        self._queue.put_nowait(item)
        self._queued += 1
        self.feedback_spooled += 1

    def health(self) -> dict[str, Any]:
        return {
            "state": "spooling" if self.down_since is not None else "ok",
            "down_s": None if self.down_since is None else round(time.monotonic() - self.down_since, 3),
            "reason": self.down_reason,
            "rows_waiting": self.spool.pending if self.down_since is not None else 0,
            "bytes": self.spool.bytes,
            "max_bytes": self.max_bytes,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "outages": self.outages,
            "feedback_spooled": self.feedback_spooled,
            "feedback_applied": self.feedback_applied,
        }

    @property
    def degraded(self) -> bool:
        return self.down_since is not None

    # --- the writer task ----------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="compass-spool-ticker")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            if self.down_since is not None and self._queue.empty():
                self._queue.put_nowait(_WAKE)  # no rows arrive: wake the retry

    def _append(self, item: dict[str, Any]) -> None:
        if "_journal" not in item:
            item["_journal"] = self.spool.append(item)
            _durable(item)

    def _settle(self, applied: list[Applied]) -> None:
        """Spooled feedback reached the store: count it and let the pipeline settle its memory."""
        for item in applied:
            self.recent.settled(item.reward_id)
        stored = [item for item in applied if item.event is not None]
        self.feedback_applied += len(stored)
        if stored and self.on_feedback is not None:
            self.on_feedback(stored)

    def must_spool(self, request_id: str) -> bool:
        """Feedback for ``request_id`` goes through the spool: it waits there already, or the store
        is away (or its replay is not done) and this replica can check the request itself."""
        known = self.down_since is not None and self.recent.get(request_id) is not None
        return known or self.recent.waiting(request_id)

    async def _before_batch(self) -> None:
        if self.down_since is not None and time.monotonic() >= self._next_try:
            await self._try_replay()

    def _gather_s(self, first: dict[str, Any]) -> float:
        return 0 if self.down_since is not None else super()._gather_s(first)  # down: spool at once

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        fresh = []
        for row in batch:
            if row.get("_journal", 0) and row["_journal"] <= self._skip_through:
                row.pop("_journal")
                self._done([row])  # its segment was replayed from disk while it queued
            else:
                fresh.append(row)
        try:
            if self.down_since is not None:
                self._spool(fresh, "the fleet store is unavailable")
            else:
                await self._insert_or_spool(fresh)
        finally:
            self._processed += len(batch)

    def _spool(self, rows: list[dict[str, Any]], why: str) -> None:
        """The store is down: make sure each row is on disk, then let it go from memory."""
        self.spooled += len(rows)
        for row in rows:
            self._append(row)
            row.pop("_journal", None)
            future = row.pop("_committed", None)
            if future is not None and not future.done():
                future.set_exception(StoreUnavailable(f"{why}; the row is spooled, not committed"))

    async def _insert_or_spool(self, rows: list[dict[str, Any]]) -> None:
        try:
            applied = await self.db.run(write_items, *_split(rows), self.origin)
        except StoreUnavailable as exc:
            self._went_down(exc)
            self._spool(rows, "the fleet store went away")
            return
        except Exception:
            self.failed_batches += 1
            log.exception("fleet history batch of %d rows failed; retrying row by row", len(rows))
            for row in rows:
                try:
                    one = _split([row])
                    self._settle(await self.db.run(write_items, *one, self.origin))
                    self.written += len(one[0])
                except StoreUnavailable as exc:
                    self._went_down(exc)
                    self._spool([row], "the fleet store went away")
                    continue
                except Exception:
                    log.exception("history row %s could not be stored", row.get("id"))
                self._done([row])
            return
        self.written += sum(1 for row in rows if "kind" not in row)
        self._done(rows)
        self._settle(applied)

    def _done(self, rows: list[dict[str, Any]]) -> None:
        seqs = [row.pop("_journal") for row in rows if "_journal" in row]
        if seqs:
            self.spool.committed(seqs)
        for row in rows:
            _durable(row)
            if row.get("kind") == FEEDBACK_KIND:  # stored, or failed for good and logged: not waiting
                self.recent.settled(row["reward_id"])
            future = row.pop("_committed", None)
            if future is not None and not future.done():
                future.set_result(None)

    def _went_down(self, exc: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            log.warning("fleet store unavailable; spooling rows to %s (%s)", self.spool.directory, exc)
        self.down_reason = str(exc)
        self._next_try = time.monotonic() + self.retry_s

    async def _try_replay(self) -> None:
        """Ping the store; if it answers, write every closed segment from disk, oldest first."""
        self._next_try = time.monotonic() + self.retry_s
        try:
            await self.db.run(_ping)
        except StoreUnavailable as exc:
            self.down_reason = str(exc)
            return
        through = self.spool.rotate()
        started = time.monotonic()
        lines = 0
        for seq in self.spool.closed_segments(through):
            applied: list[Applied] = []
            try:
                lines += await self.db.run(
                    replay_segment, self.spool.path(seq), self.batch_size, self.origin, applied
                )
            except StoreUnavailable as exc:
                self.down_reason = str(exc)
                self.replayed += lines
                self._settle(applied)  # the batches before the failure are committed
                return  # this segment is replayed again next time, idempotently
            self._settle(applied)
            self.spool.retire(seq)
        self.replayed += lines
        self._skip_through = through
        outage = time.monotonic() - (self.down_since or started)
        self.down_since = self.down_reason = None
        log.warning(
            "fleet store back after %.1f s: wrote %d spooled rows in %.2f s",
            outage,
            lines,
            time.monotonic() - started,
        )

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await super().close()
        self.spool.close()
        if not segments(self.spool.directory):  # everything written: nothing for the next start
            shutil.rmtree(self.spool.directory, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _durable(item: dict[str, Any]) -> None:
    """A request row is on disk or in the store: feedback for it may now be spooled after it."""
    entry = item.get("_recent")
    if entry is not None:
        entry.durable = True


def fleet_writer(store: Any, settings: Any, origin: str = "") -> FleetWriter:
    """Replay what an earlier run spooled (the store answered at start-up), then a new writer."""
    cfg = settings.storage
    root = spool_path(settings)
    recovered = recover_spool(store, root, origin)
    if recovered:
        log.warning("history: %d spooled rows from before a restart written to the fleet store", recovered)
    max_bytes = max(64 * 1024, int(cfg.spool_max_mb * 1024 * 1024))
    directory = root / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    lock_fd = claim(directory)
    assert lock_fd is not None  # a fresh directory
    spool = Journal(directory, segment_bytes=min(SEGMENT_BYTES, max(4096, max_bytes // 8)))
    writer = FleetWriter(
        store,
        spool,
        durability=cfg.durability,
        max_bytes=max_bytes,
        flush_interval_ms=cfg.flush_interval_ms,
        batch_size=cfg.batch_size,
        origin=origin,
    )
    writer.lock_fd = lock_fd
    return writer


__all__ = ["FleetWriter", "fleet_writer", "recover_spool", "segment_number", "spool_path"]
