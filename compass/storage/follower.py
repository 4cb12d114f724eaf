"""``Follower``: one replica following the others' changes through ``fleet_events``.

A dedicated thread holds its own PostgreSQL connection, LISTENs on ``fleet_log.CHANNEL`` and
reads new events on every notification and at least every ``poll_s`` (the fallback when a
notification is lost with a dropped connection). Events are handed to the event loop in order,
one batch at a time, and the thread waits for the handlers before reading on, so in-memory views
change on the loop thread only, as everywhere else. A replica's own events are skipped: it
applied them when it made the change.

Events are kept ``RETAIN_S`` (1 h). A follower cut off from PostgreSQL for more than half of that
(``cut_off_s``) may have missed events that were pruned meanwhile, so instead of reading on it
calls ``resync`` on the loop: the owner rebuilds its views from the tables, as a restart does
(compass/pipeline/fleet.py), and returns the position to follow from.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from compass.storage.fleet_log import CHANNEL, RETAIN_S, FleetEvent, Position, prune, read_new

log = logging.getLogger("compass.fleet")

Handler = Callable[[list[FleetEvent]], Awaitable[None]]
Resync = Callable[[], Awaitable[Position]]  # rebuild the views from the tables; where to follow from
POLL_S = 0.25  # fallback poll; notifications normally wake the follower within milliseconds
PRUNE_EVERY_S = 60.0


class Follower:
    def __init__(
        self,
        url: str,
        origin: str,
        connect_timeout_s: float = 5.0,
        poll_s: float = POLL_S,
        listen: bool = True,  # False: poll only (ops/bench/fleet_propagation.py compares the two)
    ) -> None:
        self.url = url
        self.listen = listen
        self.origin = origin
        self.connect_timeout_s = connect_timeout_s
        self.poll_s = poll_s
        self.position = Position()
        self.handlers: dict[str, list[Handler]] = {}
        self.applied = 0  # events from other replicas handed to handlers
        self.resync: Resync | None = None
        self.resyncs = 0  # full rebuilds after a long cut-off
        self.cut_off_s = RETAIN_S / 2  # cut off longer than this: rebuild rather than read on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._con: Any = None

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler`` (on the event loop) with each batch of other replicas' ``kind`` events."""
        self.handlers.setdefault(kind, []).append(handler)

    def start(self, position: Position) -> None:
        self.position = position
        self._loop = asyncio.get_running_loop()
        self._reconnect()  # a bad URL failed earlier already, at the store's connect
        self._thread = threading.Thread(target=self._run, name="fleet-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 5)
            self._thread = None
        if self._con is not None:
            try:
                self._con.close()
            except Exception:
                pass
            self._con = None

    def info(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "xmin": self.position.xmin,
            "poll_s": self.poll_s,
            "resyncs": self.resyncs,
        }

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        last_prune = 0.0
        last_read = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._con is None:
                    self._reconnect()
                away_s = time.monotonic() - last_read
                if away_s > self.cut_off_s and self.resync is not None:
                    self._resync(away_s)
                else:
                    self._drain()
                last_read = time.monotonic()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    prune(self._con)
                if self.listen:
                    for _ in self._con.notifies(timeout=self.poll_s, stop_after=1):
                        pass
                else:
                    self._stop.wait(self.poll_s)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("fleet follower: %s; reconnecting (changes wait in fleet_events)", exc)
                self._drop()
                self._stop.wait(1.0)

    def _reconnect(self) -> None:
        from compass.storage.postgres import connect

        self._con = connect(self.url, self.connect_timeout_s)
        if self.listen:
            self._con.execute(f"LISTEN {CHANNEL}")

    def _drop(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:
                pass

    def _resync(self, away_s: float) -> None:
        """Rebuild on the loop (it reads the tables itself), then follow from its snapshot."""
        log.warning(
            "fleet follower: cut off from PostgreSQL for %.0f s, more than half the %.0f s that events"
            " are kept (some may be pruned): rebuilding this replica's views from the tables",
            away_s,
            RETAIN_S,
        )
        assert self.resync is not None and self._loop is not None
        started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(self.resync(), self._loop)
        self.position = future.result(timeout=600)
        self.resyncs += 1
        log.warning("fleet follower: views rebuilt in %.2f s; following again", time.monotonic() - started)

    def _drain(self) -> None:
        events = [e for e in read_new(self._con, self.position) if e.origin != self.origin]
        if not events or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._dispatch(events), self._loop)
        future.result(timeout=60)

    async def _dispatch(self, events: list[FleetEvent]) -> None:
        runs: list[list[FleetEvent]] = []  # consecutive events of one kind, in order
        for event in events:
            if runs and runs[-1][0].kind == event.kind:
                runs[-1].append(event)
            else:
                runs.append([event])
        for batch in runs:
            kind = batch[0].kind
            for handler in self.handlers.get(kind, ()):
                try:
                    await handler(batch)
                except Exception:
                    log.exception("fleet follower: applying %d %r events failed", len(batch), kind)
        self.applied += len(events)
