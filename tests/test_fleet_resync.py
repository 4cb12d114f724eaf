"""A replica cut off from the change log for longer than it can follow rebuilds itself, no restart.

Two gateways (in process) on one PostgreSQL 15 database. Replica B's follower loses its
connection and cannot reconnect (its URL points at a closed port) while A takes feedback, evicts
and stores cache entries and creates a key; then every event is deleted, as the retention prune
does to events older than an hour. When B's follower reaches the store again after more than
``cut_off_s`` (half the retention in production, 1 s here) it rebuilds: posteriors from the
rewards, the key table, the cache from the store, and follows on from there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from compass.errors import UpstreamError
from compass.http.app import create_app
from compass.services import Services, build_services
from compass.upstream.mock import MockUpstream
from ops.ports import free_port
from tests.helpers import MOCK_POOL, make_settings, posteriors, wait_for

CHAT = "/v1/chat/completions"
ADMIN = {"authorization": "Bearer adm-resync-test"}


def replica(
    home: Path, url: str, cache: bool = True, mock: MockUpstream | None = None
) -> tuple[TestClient, Services]:
    settings = make_settings(
        home,
        MOCK_POOL,
        **{
            "storage.url": url,
            "selector.backend": "thompson",
            "cache.enabled": cache,
            "security.admin_key": "adm-resync-test",
        },
    )
    services = build_services(settings, upstream=mock or MockUpstream())
    return TestClient(create_app(settings, services)), services


def ask(client: TestClient, text: str) -> Any:
    body = {"messages": [{"role": "user", "content": text}], "temperature": 0}
    response = client.post(CHAT, json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response


def entries(client: TestClient) -> int:
    return client.get("/admin/api/cache", headers=ADMIN).json()["entries"]


def test_a_follower_cut_off_too_long_rebuilds_its_views_from_the_store_and_follows_on(
    tmp_path: Path, pg_url: str
) -> None:
    a, _ = replica(tmp_path / "a", pg_url)
    b, services_b = replica(tmp_path / "b", pg_url)
    with a, b:
        cached = ask(a, "How do I learn the cello?").json()["id"]
        assert wait_for(lambda: entries(b) == 1)
        assert services_b.rows is not None and services_b.rows.fleet is not None
        follower = services_b.rows.fleet.follower
        follower.cut_off_s = 1.0
        real_url, follower.url = follower.url, f"postgresql://compass:pw@127.0.0.1:{free_port()}/compass"
        with psycopg.connect(pg_url, autocommit=True) as con:
            con.execute("SELECT pg_terminate_backend(%s)", [follower._con.info.backend_pid])
        time.sleep(1.5)  # cut off for longer than cut_off_s
        served = [ask(a, f"question {i}").json()["id"] for i in range(6)]
        for i, request_id in enumerate(served):
            rating = {"id": request_id, "thumbs": "up" if i % 3 else "down"}
            assert a.post("/feedback", json=rating, headers=ADMIN).status_code == 200
        evicted = a.post("/feedback", json={"id": cached, "thumbs": "down"}, headers=ADMIN).json()
        assert evicted["cache_evicted"] == 1
        ask(a, "What is a good first violin?")  # a new entry B never hears of
        made = a.post("/admin/api/keys", json={"tenant": "late"}, headers=ADMIN)
        assert made.status_code == 201, made.text
        with psycopg.connect(pg_url, autocommit=True) as con:
            assert con.execute("DELETE FROM fleet_events").rowcount > 0  # pruned while B was away
        assert posteriors(b, ADMIN) != posteriors(a, ADMIN)
        follower.url = real_url
        assert wait_for(lambda: follower.resyncs == 1), "the follower never rebuilt"
        assert posteriors(b, ADMIN) == posteriors(a, ADMIN)
        assert entries(b) == entries(a) == 5  # 6 questions, 2 rated down; the cello's evicted; the violin's
        assert ask(b, "What is a good first violin?").headers["x-compass-cache"] == "exact"
        assert ask(b, "How do I learn the cello?").headers["x-compass-cache"] == "miss"
        key = {"authorization": f"Bearer {made.json()['key']}"}
        assert b.get("/v1/models", headers=key).status_code == 200
        # and it follows on from the rebuild's snapshot
        assert a.post("/feedback", json={"id": served[0], "thumbs": "up"}, headers=ADMIN).status_code == 200
        assert wait_for(lambda: posteriors(b, ADMIN) == posteriors(a, ADMIN), 5.0)
        assert follower.resyncs == 1


def test_own_feedback_and_failures_during_a_resync_are_neither_lost_nor_counted_twice(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B has upstream failures and takes feedback while its resync reads the snapshot.

    The snapshot read is held for 0.5 s once it has started; meanwhile failures are observed at
    once and written after it, and feedback waits. The rebuild must apply the failures (its
    snapshot lacks them, and the follower skips B's own events) and the feedback once.
    """
    import compass.storage.pg_rows as pg_rows

    mock = MockUpstream()
    a, _ = replica(tmp_path / "a", pg_url, cache=False)
    b, services_b = replica(tmp_path / "b", pg_url, cache=False, mock=mock)
    reading = threading.Event()

    def held_snapshot(con: Any, real: Any = pg_rows.rebuild_rewards_pg) -> Any:
        reading.set()
        time.sleep(0.5)
        return real(con)

    with a, b:
        served = [ask(b, f"question {i}").json()["id"] for i in range(12)]
        for i, request_id in enumerate(served[:6]):
            b.post("/feedback", json={"id": request_id, "thumbs": "up" if i % 2 else "down"}, headers=ADMIN)
        assert services_b.rows is not None and services_b.rows.fleet is not None
        follower = services_b.rows.fleet.follower
        monkeypatch.setattr(pg_rows, "rebuild_rewards_pg", held_snapshot)
        follower.cut_off_s = 0.0  # the next read is a rebuild
        assert reading.wait(10)
        follower.cut_off_s = 1e9  # and only that one
        threads = []
        for i in range(6):
            mock.enqueue_error(UpstreamError("provider down"))  # a zero reward, observed at once
            body = {"messages": [{"role": "user", "content": f"a failure {i}"}]}  # 200, or 502 when
            # a concurrent request's fallback took the next error too; each error is one failure row
            threads.append(
                threading.Thread(target=b.post, args=(CHAT,), kwargs={"json": body, "headers": ADMIN})
            )
        rating = {"id": served[7], "thumbs": "down"}
        threads.append(
            threading.Thread(target=b.post, args=("/feedback",), kwargs={"json": rating, "headers": ADMIN})
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert wait_for(lambda: follower.resyncs == 1)
        assert wait_for(lambda: posteriors(a, ADMIN) == posteriors(b, ADMIN), 5.0), (
            posteriors(a, ADMIN),
            posteriors(b, ADMIN),
        )
        posteriors_of_b = posteriors(b, ADMIN)
        with psycopg.connect(pg_url) as con:
            counts = con.execute(
                "SELECT source, count(*) FROM rewards GROUP BY source ORDER BY source"
            ).fetchall()
        assert counts == [("failure", 6), ("feedback", 7)]
    c, _ = replica(tmp_path / "c", pg_url, cache=False)
    with c:  # the fold over the stored rows, from scratch
        assert posteriors(c, ADMIN) == posteriors_of_b
