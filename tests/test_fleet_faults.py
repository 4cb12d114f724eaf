"""Faults of the fleet store: PostgreSQL restarts under a replica, the outage spool, its bound.

Each test runs its own PostgreSQL 15 cluster (it is stopped and started mid-test, which the
session's shared cluster must not be). Requests keep being served while the server is down, their
rows wait on disk and land once, after reconnect; a full spool refuses with a 503 in the caller's
API shape. The kill -9 cases (a replica dying while PostgreSQL is down, one of two behind nginx)
are in tests/test_fleet_kill.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from litestar.testing import TestClient

from compass.errors import StoreUnavailable, UpstreamError
from compass.http.app import create_app
from compass.services import build_services
from compass.storage.history import utcnow
from compass.storage.journal import Journal
from compass.storage.pg_rows import insert_requests_pg
from compass.storage.postgres import PostgresStore
from compass.storage.spool import claim, recover_spool, replay_segment
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings
from tests.postgres import Cluster

CHAT = "/v1/chat/completions"


def gateway(home: Path, url: str, mock: MockUpstream | None = None, **overrides: Any) -> TestClient:
    settings = make_settings(home, MOCK_POOL, **{"storage.url": url, **overrides})
    return TestClient(create_app(settings, build_services(settings, upstream=mock or MockUpstream())))


def chat(client: TestClient, text: str) -> Any:
    return client.post(CHAT, json={"messages": [{"role": "user", "content": text}]})


def stored_ids(url: str) -> list[str]:
    with psycopg.connect(url) as con:
        return [r[0] for r in con.execute("SELECT id FROM requests")]


def wait_healthy(client: TestClient, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        health = client.get("/health").json()
        if health["status"] == "ok" or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_the_store_reconnects_after_a_restart(cluster: Cluster) -> None:
    store = PostgresStore(cluster.url(), connect_timeout_s=2)
    store.open()
    try:
        assert store.run_sync(lambda con: con.execute("SELECT 1").fetchone()[0]) == 1
        cluster.stop_server("fast")
        with pytest.raises(StoreUnavailable):
            store.run_sync(lambda con: con.execute("SELECT 1").fetchone())
        with pytest.raises(StoreUnavailable, match="cannot reach"):  # still down: a fast refusal
            time.sleep(0.3)
            store.run_sync(lambda con: con.execute("SELECT 1").fetchone())
        cluster.start_server()
        time.sleep(0.3)
        assert store.run_sync(lambda con: con.execute("SELECT 2").fetchone()[0]) == 2
        assert store.reconnects == 1
    finally:
        store.close()


def test_an_idle_connection_is_checked_so_a_restart_meanwhile_costs_no_error(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compass.storage.postgres as postgres

    monkeypatch.setattr(postgres, "IDLE_CHECK_S", 0.2)
    store = PostgresStore(cluster.url(), connect_timeout_s=2)
    store.open()
    try:
        cluster.stop_server("fast")
        cluster.start_server()
        time.sleep(0.3)
        assert store.run_sync(lambda con: con.execute("SELECT 3").fetchone()[0]) == 3
        assert store.reconnects == 1
    finally:
        store.close()


def test_requests_are_served_through_a_restart_and_spooled_rows_land_once(
    tmp_path: Path, cluster: Cluster
) -> None:
    url = cluster.url()
    with gateway(tmp_path, url) as client:
        before = [chat(client, f"before {i}").json()["id"] for i in range(5)]
        client.get("/health")
        cluster.stop_server("fast")
        during = []
        for i in range(30):
            response = chat(client, f"during the outage {i}")
            assert response.status_code == 200, response.text
            during.append(response.json()["id"])
        time.sleep(0.3)
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        spool = health["storage"]["spool"]
        assert spool["state"] == "spooling" and spool["rows_waiting"] >= 30 and spool["bytes"] > 0
        assert "compass-test" not in str(health)  # the password stays out of the reason
        # Feedback for a request this replica did not serve cannot be checked without the store:
        # a 503 to retry (its own requests' feedback is spooled: tests/test_fleet_feedback_outage.py).
        refused = client.post("/feedback", json={"id": "chatcmpl-another-replicas", "thumbs": "up"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert refused.headers["retry-after"] == "1"
        cluster.start_server()
        health = wait_healthy(client)
        assert health["status"] == "ok", health
        assert health["storage"]["spool"]["replayed"] >= 30
        assert health["storage"]["spool"]["outages"] == 1
        after = [chat(client, f"after {i}").json()["id"] for i in range(5)]
        assert client.post("/feedback", json={"id": during[3], "thumbs": "up"}).status_code == 200
    ids = stored_ids(url)
    assert len(ids) == len(set(ids))
    assert set(ids) == set(before + during + after)
    assert not list((tmp_path / "spool").rglob("*.jsonl"))  # a clean stop leaves no spool behind


@pytest.mark.parametrize("durability", ["journal", "batched"])
def test_a_full_spool_refuses_new_requests_with_a_503_and_keeps_every_row(
    tmp_path: Path, cluster: Cluster, durability: str
) -> None:
    url = cluster.url()
    overrides = {"storage.spool_max_mb": 0.0625, "storage.durability": durability}  # 64 KiB
    with gateway(tmp_path, url, **overrides) as client:
        chat(client, "warm")
        cluster.stop_server("fast")
        served, refused = [], None
        filler = "x" * 2000
        for i in range(200):
            response = chat(client, f"{filler} {i}")
            if response.status_code != 200:
                refused = response
                break
            served.append(response.json()["id"])
            time.sleep(0.01)  # let the writer notice the outage (batched spools only then)
        assert refused is not None and len(served) >= 10, len(served)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "spool_full"
        anthropic = client.post(
            "/v1/messages",
            json={"model": "small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert anthropic.status_code == 529  # Anthropic's overloaded status and body
        assert anthropic.json()["type"] == "error"
        assert anthropic.json()["error"]["type"] == "overloaded_error"
        cluster.start_server()
        assert wait_healthy(client)["status"] == "ok"
        assert chat(client, "served again").status_code == 200
    assert set(served) <= set(stored_ids(url))


def test_strict_durability_refuses_while_the_store_is_down(tmp_path: Path, cluster: Cluster) -> None:
    url = cluster.url()
    with gateway(tmp_path, url, **{"storage.durability": "strict"}) as client:
        ok = chat(client, "committed").json()["id"]
        cluster.stop_server("fast")
        first = chat(client, "the commit fails")  # served upstream, but no commit: not acknowledged
        assert first.status_code == 503
        time.sleep(0.1)
        second = chat(client, "refused up front")
        assert second.status_code == 503 and second.json()["error"]["code"] == "store_unavailable"
        cluster.start_server()
        assert wait_healthy(client)["status"] == "ok"
        assert chat(client, "committed again").status_code == 200
    assert ok in stored_ids(url)


def test_a_failure_reward_during_the_outage_is_spooled_and_lands_after_it(
    tmp_path: Path, cluster: Cluster
) -> None:
    url = cluster.url()
    mock = MockUpstream()
    with gateway(tmp_path, url, mock) as client:
        chat(client, "warm")
        cluster.stop_server("fast")
        mock.enqueue_error(UpstreamError("provider down"))
        response = chat(client, "the first model fails, the fallback answers")
        assert response.status_code == 200, response.text
        failed_id = response.json()["id"]
        cluster.start_server()
        assert wait_healthy(client)["status"] == "ok"
    with psycopg.connect(url) as con:
        rewards = con.execute(
            "SELECT source, reward FROM rewards WHERE request_id = %s", [failed_id]
        ).fetchall()
    assert rewards == [("failure", 0.0)]


def test_inserts_are_idempotent_by_id_so_a_replayed_segment_writes_nothing_twice(
    tmp_path: Path, pg_url: str
) -> None:
    store = PostgresStore(pg_url)
    store.open()
    try:
        rows = [
            {
                "id": f"r{i}",
                "created_at": utcnow(),
                "tenant": "t",
                "stream": False,
                "demo": False,
                "status": 200,
                "messages": [{"role": "user"}],
            }
            for i in range(5)
        ]
        store.run_sync(insert_requests_pg, rows[:3])
        store.run_sync(insert_requests_pg, rows)  # a batch whose commit was lost, sent again
        spool = Journal(tmp_path / "spool")
        for row in rows:
            spool.append(row)
        spool.append(
            {"kind": "reward", "row": ["w1", utcnow(), 1.0, "r1", None, "c", "small", 1.0, "feedback", None]}
        )
        segment = spool.rotate()
        assert store.run_sync(replay_segment, spool.path(segment)) == 6
        assert store.run_sync(replay_segment, spool.path(segment)) == 6  # a crash before its removal
        counts = store.run_sync(
            lambda con: con.execute(
                "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM rewards)"
            ).fetchone()
        )
        assert counts == (5, 1)
        spool.close()
    finally:
        store.close()


def test_a_spooled_reward_keeps_its_vector_and_tells_the_other_replicas(tmp_path: Path, pg_url: str) -> None:
    """The vector goes to disk as base64; replayed, the row and its fleet event carry the same bytes."""
    from compass.storage.pg_rows import reward_event_of
    from compass.storage.rewards import reward_insert
    from layers.bandit.base import RewardEvent

    store = PostgresStore(pg_url)
    store.open()
    try:
        vector = np.arange(8, dtype=np.float32).tobytes()
        event = RewardEvent(
            request_id="r1",
            context="simple",
            model="small",
            reward=0.0,
            ts=1.0,
            source="failure",
            embedding=vector,
        )
        _, _, params = reward_insert(event, "t", None, mark="%s")
        spool = Journal(tmp_path / "spool")
        spool.append({"kind": "reward", "row": params})
        segment = spool.rotate()
        assert store.run_sync(replay_segment, spool.path(segment), 512, "replica-a") == 1
        stored, payload, origin = store.run_sync(
            lambda con: con.execute(
                "SELECT r.embedding, e.payload, e.origin FROM rewards r, fleet_events e"
                " WHERE e.kind = 'reward'"
            ).fetchone()
        )
        assert bytes(stored) == vector
        followed = reward_event_of(payload["event"])
        assert origin == "replica-a" and followed.embedding == vector and followed.source == "failure"
        assert store.run_sync(replay_segment, spool.path(segment), 512, "replica-a") == 1  # again
        events = store.run_sync(lambda con: con.execute("SELECT count(*) FROM fleet_events").fetchone()[0])
        assert events == 1  # a row written before appends no second event
        spool.close()
    finally:
        store.close()


def test_start_up_replays_the_spools_of_dead_processes_and_leaves_a_live_ones(
    tmp_path: Path, pg_url: str
) -> None:
    root = tmp_path / "spool"
    row = {"tenant": "t", "stream": False, "demo": False, "status": 200, "created_at": utcnow()}
    for name in ("dead", "alive"):
        spool = Journal(root / name)
        spool.append({**row, "id": f"from-{name}"})
        spool.close()  # a row not committed: the segment stays, as after kill -9
    held = claim(root / "alive")  # a live process holds its spool
    assert held is not None
    store = PostgresStore(pg_url)
    store.open()
    try:
        assert recover_spool(store, root) == 1
        assert set(store.run_sync(lambda con: [r[0] for r in con.execute("SELECT id FROM requests")])) == {
            "from-dead"
        }
        assert not (root / "dead").exists() and (root / "alive").exists()
        os.close(held)  # that process died: the next start takes its rows
        assert recover_spool(store, root) == 1
        assert recover_spool(store, root) == 0
        ids = store.run_sync(lambda con: sorted(r[0] for r in con.execute("SELECT id FROM requests")))
        assert ids == ["from-alive", "from-dead"]
    finally:
        store.close()
