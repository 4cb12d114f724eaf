"""Fleet fault: feedback while PostgreSQL is down (``python -m ops.faults.fleet``, scenario
``pg_down_feedback`` and, with the replica also killed, ``pg_down_feedback_kill9``).

Two real ``compass serve`` replicas (Thompson selector) on one throwaway PostgreSQL 15. Clients
load replica A; one rater thread sends feedback for A's acknowledged requests, three of four to
A and one to B, with ratings that are exact binary fractions (so the posteriors' sums compare
exactly). PostgreSQL stops for a while and starts again; in the kill variant A is ``kill -9``ed
while it is down and started again on the same home once it is back.

Checks: A acknowledges feedback during the outage (B, which did not serve those requests, answers
503 ``store_unavailable``); afterwards the store holds exactly one row per acknowledged feedback
and each request's active row is its last acknowledged rating; A (live or restarted), B and a
fresh replica C report identical posteriors.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ops.faults.harness import env_offline
from ops.faults.load import Load
from ops.procs import GatewayProcess

RATINGS = (0.0, 0.25, 0.5, 0.75, 1.0)


class Rater:
    """One thread: feedback for acknowledged requests of ``load``, sequentially, every ``every_s``."""

    def __init__(self, load: Load, a_url: str, b_url: str, every_s: float = 0.01) -> None:
        self.load, self.urls, self.every_s = load, (a_url, b_url), every_s
        self.sent: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Rater:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        rng = random.Random(11)
        clients = [httpx.Client(base_url=url, timeout=30) for url in self.urls]
        try:
            n = 0
            while not self._stop.is_set():
                acked = [r.request_id for r in list(self.load.results) if r.ok and r.request_id]
                if not acked:
                    time.sleep(0.05)
                    continue
                n += 1
                replica = 1 if n % 4 == 0 else 0
                request_id = rng.choice(acked[-200:])  # the latest, so some get rated twice
                rating = rng.choice(RATINGS)
                started = time.monotonic()
                try:
                    response = clients[replica].post("/feedback", json={"id": request_id, "score": rating})
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    status, body = None, {"error": {"code": type(exc).__name__}}
                self.sent.append(
                    {
                        "replica": "ab"[replica],
                        "request_id": request_id,
                        "rating": rating,
                        "started": started,
                        "ms": (time.monotonic() - started) * 1000,
                        "status": status,
                        "spooled": bool(body.get("spooled")) if status == 200 else None,
                        "code": (body.get("error") or {}).get("code") if status != 200 else None,
                    }
                )
                self._stop.wait(self.every_s)
        finally:
            for client in clients:
                client.close()


def posteriors(url: str) -> dict[str, Any]:
    snapshot = httpx.get(f"{url}/admin/api/bandit", timeout=30).json()
    return {
        context: {name: (m["alpha"], m["beta"], m["pulls"]) for name, m in models.items()}
        for context, models in snapshot["contexts"].items()
    }


def wait_until(check: Any, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if check():
                return round(time.monotonic() - started, 3)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return None


def stored_feedback(url: str) -> list[tuple[str, float, bool]]:
    with psycopg.connect(url) as con:
        return con.execute(
            "SELECT request_id, reward, superseded FROM rewards WHERE source = 'feedback'"
        ).fetchall()


def pg_down_feedback(
    upstream_url: str, work: Path, clients: int = 4, phases: tuple[float, ...] = (2, 3), kill: bool = False
) -> dict[str, Any]:
    from ops.faults.fleet import _cluster, fleet_config, spool_lines

    before_s, down_s = phases
    cluster = _cluster()
    config = fleet_config(upstream_url, cluster.url())
    config["selector"] = {"backend": "thompson"}
    a = GatewayProcess(work / "a", config, env=env_offline())
    b = GatewayProcess(work / "b", config, env=env_offline())
    again = fresh = None
    figures: dict[str, Any] = {"clients": clients, "phases_s": list(phases), "kill": kill}
    try:
        a.start()
        b.start()
        with Load([a.url], clients) as load, Rater(load, a.url, b.url) as rater:
            time.sleep(before_s)
            cluster.stop_server("fast")
            down_at = time.monotonic()  # stopped: a rating sent before this may have been stored live
            time.sleep(down_s)
            rater.__exit__()  # no rating in flight at the kill: every answer is known
            if kill:
                a.kill()
                figures["spool_lines_after_kill"] = spool_lines(a.home)
        cluster.start_server()
        up_at = time.monotonic()
        if kill:
            again = GatewayProcess(a.home, config, env=env_offline(), port=a.port).start()
            figures["restart_s"] = round(time.monotonic() - up_at, 2)
        else:
            figures["seconds_to_ok_after_pg_start"] = wait_until(
                lambda: httpx.get(f"{a.url}/health", timeout=5).json()["status"] == "ok", 30
            )
        live = again or a
        figures["seconds_until_a_equals_b"] = wait_until(
            lambda: posteriors(live.url) == posteriors(b.url), 10
        )
        fresh = GatewayProcess(work / "c", config, env=env_offline()).start()
        figures["fresh_replica_equal"] = posteriors(fresh.url) == posteriors(live.url) == posteriors(b.url)
        figures["contexts"] = {c: len(m) for c, m in posteriors(fresh.url).items()}
        for proc in (fresh, live, b):
            proc.stop()
        stored = stored_feedback(cluster.url())
    finally:
        for proc in (fresh, again, a, b):
            if proc is not None:
                proc.stop()
        cluster.stop()
    return {**figures, **_tally(rater.sent, stored, down_at)}


def _tally(
    sent: list[dict[str, Any]], stored: list[tuple[str, float, bool]], down_at: float
) -> dict[str, Any]:
    acked = [s for s in sent if s["status"] == 200]
    down = [s for s in sent if s["started"] >= down_at]
    last: dict[str, float] = {}
    for s in acked:
        last[s["request_id"]] = s["rating"]
    active: dict[str, list[float]] = {}
    for request_id, reward, superseded in stored:
        if not superseded:
            active.setdefault(request_id, []).append(reward)
    ms = sorted(s["ms"] for s in down if s["replica"] == "a" and s["status"] == 200)
    return {
        "feedback_sent": len(sent),
        "feedback_acked": len(acked),
        "acked_while_down_a": sum(s["replica"] == "a" and s["status"] == 200 and s["spooled"] for s in down),
        "sent_while_down_b": sum(s["replica"] == "b" for s in down),
        "refused_while_down_b_503": sum(
            s["replica"] == "b" and s["status"] == 503 and s["code"] == "store_unavailable" for s in down
        ),
        "failed_while_down_a": sum(s["replica"] == "a" and s["status"] != 200 for s in down),
        "spooled_ack_ms_p50": round(statistics.median(ms), 2) if ms else None,
        "spooled_ack_ms_p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2) if ms else None,
        "rows_stored": len(stored),
        "rows_expected": len(acked),
        "requests_rated": len(last),
        "requests_with_wrong_active_row": sum(active.get(r) != [v] for r, v in last.items()),
        "requests_active_but_not_acked": len(set(active) - set(last)),
    }


def verdicts(figures: dict[str, Any]) -> list[tuple[bool, str]]:
    f = figures
    restored = "after its restart" if f["kill"] else "after A's /health ok"
    return [
        (
            f["acked_while_down_a"] > 0 and f["failed_while_down_a"] == 0,
            f"A acknowledged {f['acked_while_down_a']} feedback while PostgreSQL was down"
            f" (spooled; ack p50 {f['spooled_ack_ms_p50']} ms, p99 {f['spooled_ack_ms_p99']} ms),"
            f" {f['failed_while_down_a']} failed",
        ),
        (
            f["refused_while_down_b_503"] == f["sent_while_down_b"],
            f"B, which served none of them: {f['refused_while_down_b_503']}/{f['sent_while_down_b']}"
            " answered 503 store_unavailable while down",
        ),
        (
            f["rows_stored"] == f["rows_expected"]
            and f["requests_with_wrong_active_row"] == 0
            and f["requests_active_but_not_acked"] == 0,
            f"{restored}: {f['rows_stored']} feedback rows for {f['rows_expected']} acknowledged"
            f" ({f['requests_rated']} requests,"
            f" {f['requests_with_wrong_active_row']} with a wrong active row)",
        ),
        (
            f["seconds_until_a_equals_b"] is not None and f["fresh_replica_equal"],
            f"posteriors A == B {f['seconds_until_a_equals_b']} s {restored} (B's follower retries every"
            f" 1 s); a fresh replica's equal:"
            f" {f['fresh_replica_equal']}",
        ),
    ]


def pg_down_feedback_kill9(
    upstream_url: str, work: Path, clients: int = 4, phases: tuple[float, ...] = (2, 3)
) -> dict[str, Any]:
    return pg_down_feedback(upstream_url, work, clients, phases, kill=True)
