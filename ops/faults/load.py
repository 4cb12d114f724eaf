"""Closed-loop clients and a ``/health`` watcher for the fleet fault scenarios (``ops.faults.fleet``).

Each client thread sends chat completions back to back and records, per request, when it started,
whether it succeeded (a 200 with a body, or a stream ending in ``[DONE]``), its request id (the
``x-compass-request-id`` header) and which replica answered (nginx's ``X-Compass-Upstream``).
The acknowledged ids are what the store must hold afterwards.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Result:
    started: float
    ok: bool
    stream: bool
    status: int | None = None
    request_id: str | None = None
    upstream_all: str | None = None  # nginx's $upstream_addr: "a, b" when it retried
    error: str | None = None

    @property
    def upstream(self) -> str | None:
        return self.upstream_all.split(",")[-1].strip() if self.upstream_all else None


class Load:
    """``with Load([url], clients) as load:`` clients run until the block ends; then ``load.results``."""

    def __init__(self, urls: list[str], clients: int = 8, stream_share: float = 0.0, seed: int = 5) -> None:
        self.urls = urls
        self.clients = clients
        self.stream_share = stream_share
        self.seed = seed
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def acked(self) -> set[str]:
        return {r.request_id for r in self.results if r.ok and r.request_id}

    def _client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        url = self.urls[n % len(self.urls)]
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                stream = rng.random() < self.stream_share
                body = {
                    "messages": [{"role": "user", "content": f"client {n} question {i}: {rng.random():.6f}"}],
                    "stream": stream,
                }
                result = Result(started=time.monotonic(), ok=False, stream=stream)
                try:
                    if stream:
                        with client.stream("POST", "/v1/chat/completions", json=body) as response:
                            text = "".join(response.iter_text())
                            self._fill(result, response)
                            result.ok = response.status_code == 200 and "data: [DONE]" in text
                            if not result.ok:
                                result.error = f"{response.status_code}: {text[-200:]}"
                    else:
                        response = client.post("/v1/chat/completions", json=body)
                        self._fill(result, response)
                        result.ok = response.status_code == 200 and bool(response.json().get("choices"))
                        if not result.ok:
                            result.error = f"{response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError) as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
                if not result.ok:
                    time.sleep(0.05)  # a refused client backs off a little, as SDKs do
                with self._lock:
                    self.results.append(result)

    @staticmethod
    def _fill(result: Result, response: httpx.Response) -> None:
        result.status = response.status_code
        result.request_id = response.headers.get("x-compass-request-id")
        result.upstream_all = response.headers.get("x-compass-upstream")


class HealthWatch:
    """Polls ``/health`` every ``every_s`` in a thread: states seen, most rows waiting, when ok."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        self.url = url
        self.every_s = every_s
        self.samples: list[tuple[float, str]] = []
        self.max_waiting = 0
        self.last_spool: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    body = client.get(f"{self.url}/health").json()
                    spool = body.get("storage", {}).get("spool") or {}
                    self.samples.append((time.monotonic(), body.get("status", "?")))
                    self.max_waiting = max(self.max_waiting, spool.get("rows_waiting") or 0)
                    self.last_spool = spool
                except (httpx.HTTPError, ValueError):
                    self.samples.append((time.monotonic(), "unreachable"))
                time.sleep(self.every_s)

    def saw(self, status: str) -> bool:
        return any(s == status for _, s in self.samples)

    def ok_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first ok sample after it (None if it never came)."""
        return next((round(t - since, 2) for t, s in self.samples if t >= since and s == "ok"), None)


def store_ids(url: str) -> set[str]:
    """Every request id in the fleet store (checks there are no duplicates on the way)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM requests")]
    if len(ids) != len(set(ids)):
        raise AssertionError(f"{len(ids) - len(set(ids))} duplicate request rows in the store")
    return set(ids)
