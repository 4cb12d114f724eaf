"""Feedback while PostgreSQL is away: accepted for this replica's own requests, spooled, applied once.

Each gateway test runs its own PostgreSQL 15 cluster (stopped and started mid-test). The kill -9
case (feedback acknowledged while PostgreSQL is down, the replica killed, both back) runs real
``compass serve`` processes in tests/test_fleet_kill.py (``ops.faults.fleet_feedback``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.storage.history import utcnow
from compass.storage.journal import Journal
from compass.storage.pg_rows import apply_feedback_pg, insert_requests_pg
from compass.storage.postgres import PostgresStore
from compass.storage.spool import replay_segment
from compass.storage.spool_feedback import apply_spooled_feedback, feedback_item
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings, posteriors, wait_for
from tests.postgres import Cluster

CHAT = "/v1/chat/completions"
THOMPSON = {"selector.backend": "thompson", "selector.options": {"seed": 7}}


def gateway(home: Path, url: str, **overrides: Any) -> TestClient:
    settings = make_settings(home, MOCK_POOL, **{"storage.url": url, **THOMPSON, **overrides})
    return TestClient(create_app(settings, build_services(settings, upstream=MockUpstream())))


def chat(client: TestClient, text: str) -> str:
    response = client.post(CHAT, json={"messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def feedback_rows(url: str) -> list[tuple[str, float, bool]]:
    with psycopg.connect(url) as con:
        return con.execute(
            "SELECT request_id, reward, superseded FROM rewards WHERE source = 'feedback' ORDER BY seq"
        ).fetchall()


def test_feedback_during_an_outage_is_answered_learned_at_once_and_stored_once_after(
    tmp_path: Path, cluster: Cluster
) -> None:
    url = cluster.url()
    with gateway(tmp_path / "a", url) as a, gateway(tmp_path / "b", url) as b:
        before = [chat(a, f"before {i}") for i in range(3)]
        assert a.post("/feedback", json={"id": before[0], "thumbs": "down"}).status_code == 200
        assert wait_for(lambda: posteriors(a) == posteriors(b))
        cluster.stop_server("fast")
        during = [chat(a, f"during the outage {i}") for i in range(3)]
        moved_from = posteriors(a)
        sent = [(before[0], {"thumbs": "up"}), (during[0], {"score": 0.25}), (during[1], {"thumbs": "up"})]
        sent.append((during[1], {"thumbs": "down"}))  # supersedes the one before it, offline too
        answers = []
        for request_id, rating in sent:
            response = a.post("/feedback", json={"id": request_id, **rating})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        assert all(x["spooled"] and x["learned"] for x in answers)
        assert [x["replaced"] for x in answers] == [1, 0, 0, 1]  # it knew before[0]'s earlier rating
        assert posteriors(a) != moved_from  # the local posteriors moved at once
        # B did not serve during[2]; neither replica can check an id it does not know while PG is away.
        for client, request_id in ((b, during[2]), (a, "chatcmpl-unknown")):
            refused = client.post("/feedback", json={"id": request_id, "thumbs": "up"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_unavailable"
            assert refused.headers["retry-after"] == "1"
            assert "cannot be checked" in refused.json()["error"]["message"]
        health = a.get("/health").json()
        assert health["status"] == "degraded"
        assert health["storage"]["spool"]["feedback_spooled"] == 4
        cluster.start_server()
        assert wait_for(lambda: a.get("/health").json()["status"] == "ok")
        assert a.get("/health").json()["storage"]["spool"]["feedback_applied"] == 4
        assert wait_for(lambda: posteriors(a) == posteriors(b)), (posteriors(a), posteriors(b))
        live = posteriors(a)
    rows = feedback_rows(url)
    active = {(r[0], r[1]) for r in rows if not r[2]}
    assert active == {(before[0], 1.0), (during[0], 0.25), (during[1], 0.0)}
    assert len(rows) == 5  # before[0] twice, during[1] twice (earlier ones superseded), during[0]
    with gateway(tmp_path / "c", url) as c:  # a fresh replica folds the stored rows
        assert posteriors(c) == live


def test_a_full_spool_refuses_feedback_with_a_503_like_new_requests(tmp_path: Path, cluster: Cluster) -> None:
    url = cluster.url()
    with gateway(tmp_path, url, **{"storage.spool_max_mb": 0.0625}) as client:  # 64 KiB
        served = chat(client, "warm")
        cluster.stop_server("fast")
        filler = "x" * 2000
        for i in range(200):
            response = client.post(CHAT, json={"messages": [{"role": "user", "content": f"{filler} {i}"}]})
            if response.status_code == 503:
                break
            time.sleep(0.01)
        refused = client.post("/feedback", json={"id": served, "thumbs": "up"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "spool_full"
        cluster.start_server()
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok")
        assert client.post("/feedback", json={"id": served, "thumbs": "up"}).json()["spooled"] is False
    assert [(r[0], r[1]) for r in feedback_rows(url)] == [(served, 1.0)]


def request_row(request_id: str, tenant: str = "t") -> dict[str, Any]:
    return {
        "id": request_id,
        "created_at": utcnow(),
        "tenant": tenant,
        "stream": False,
        "demo": False,
        "status": 200,
        "model": "small",
        "context": "simple",
    }


def test_a_replayed_feedback_line_is_applied_once_with_its_event(tmp_path: Path, pg_url: str) -> None:
    """A crash between the apply and the segment's removal replays the line: nothing changes twice."""
    store = PostgresStore(pg_url)
    store.open()
    try:
        spool = Journal(tmp_path / "spool")
        spool.append(request_row("r1"))  # the request row precedes its feedback in the spool
        spool.append(feedback_item("w1", "r1", "t", 0.75, "spooled", 10.0, []))
        segment = spool.rotate()
        for _ in range(2):
            assert store.run_sync(replay_segment, spool.path(segment), 512, "replica-a") == 2
        rows, events = store.run_sync(
            lambda con: (
                con.execute("SELECT id, reward, ts, tenant, comment FROM rewards").fetchall(),
                con.execute("SELECT origin, kind FROM fleet_events").fetchall(),
            )
        )
        assert rows == [("w1", 0.75, 10.0, "t", "spooled")]
        assert events == [("replica-a", "reward")]
        spool.close()
    finally:
        store.close()


def test_replay_corrects_what_the_replica_assumed_was_active(pg_url: str) -> None:
    """Another replica rated the request meanwhile: the store's answer says what to undo locally."""
    store = PostgresStore(pg_url)
    store.open()
    try:
        store.run_sync(insert_requests_pg, [request_row("r1")])
        other = store.run_sync(apply_feedback_pg, "r1", None, 1.0, None, 5.0, "replica-b")
        assert other is not None
        item = feedback_item("w2", "r1", "t", 0.0, None, 6.0, [])  # it knew of no earlier rating
        (applied,) = store.run_sync(apply_spooled_feedback, [item], "replica-a")
        assert applied.forget == [other["event"]] and applied.restore == []
        (again,) = store.run_sync(apply_spooled_feedback, [item], "replica-a")
        assert again.event is None and again.reward_id == "w2"  # applied before: nothing changes
        wrong_tenant = feedback_item("w3", "r1", "u", 0.0, None, 7.0, [])
        assert [a.event for a in store.run_sync(apply_spooled_feedback, [wrong_tenant], "replica-a")] == [
            None
        ]
        active = store.run_sync(
            lambda con: con.execute("SELECT id FROM rewards WHERE NOT superseded").fetchall()
        )
        assert active == [("w2",)]
    finally:
        store.close()


def test_a_thumbs_down_during_the_outage_evicts_the_cached_answer_once_it_is_stored(
    tmp_path: Path, cluster: Cluster
) -> None:
    url = cluster.url()
    question = {"messages": [{"role": "user", "content": "How do I learn the cello?"}], "temperature": 0}
    with gateway(tmp_path, url, **{"cache.enabled": True}) as client:
        first = client.post(CHAT, json=question).json()["id"]
        assert wait_for(lambda: client.get("/admin/api/cache").json()["entries"] == 1)
        cluster.stop_server("fast")
        answer = client.post("/feedback", json={"id": first, "thumbs": "down"}).json()
        assert answer["spooled"] and answer["cache_evicted"] == 0  # the eviction needs the store
        cluster.start_server()
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok")
        assert wait_for(lambda: client.get("/admin/api/cache").json()["entries"] == 0)
        with psycopg.connect(url) as con:  # gone from the store too, so no replica reloads it
            assert con.execute("SELECT count(*) FROM cache_entries").fetchone()[0] == 0
        assert client.post(CHAT, json=question).headers["x-compass-cache"] == "miss"


def test_tenant_scoping_holds_for_feedback_checked_without_the_store(
    tmp_path: Path, cluster: Cluster
) -> None:
    admin = {"authorization": "Bearer adm-outage-test"}
    with gateway(tmp_path, cluster.url(), **{"security.admin_key": "adm-outage-test"}) as client:
        keys = {}
        for tenant in ("t1", "t2"):
            made = client.post("/admin/api/keys", json={"tenant": tenant}, headers=admin)
            assert made.status_code == 201, made.text
            keys[tenant] = {"authorization": f"Bearer {made.json()['key']}"}
        body = {"messages": [{"role": "user", "content": "tenant one asks"}]}
        served = client.post(CHAT, json=body, headers=keys["t1"]).json()["id"]
        cluster.stop_server("fast")
        rating = {"id": served, "thumbs": "up"}
        other = client.post("/feedback", json=rating, headers=keys["t2"])
        assert other.status_code == 404, other.text  # known here, and not tenant two's
        assert other.json()["error"]["code"] == "request_not_found"
        for who in (keys["t1"], admin):
            answer = client.post("/feedback", json=rating, headers=who)
            assert answer.status_code == 200 and answer.json()["spooled"], answer.text
        cluster.start_server()
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok")
    assert [(r[0], r[2]) for r in feedback_rows(cluster.url())] == [(served, True), (served, False)]


def test_feedback_after_reconnect_queues_behind_the_spooled_feedback_it_supersedes(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Until the spool is replayed, newer feedback for a request goes through it too, in order."""
    url = cluster.url()
    settings = make_settings(tmp_path, MOCK_POOL, **{"storage.url": url, **THOMPSON})
    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        served = chat(client, "rated twice")
        cluster.stop_server("fast")
        assert client.post("/feedback", json={"id": served, "thumbs": "down"}).json()["spooled"]
        assert services.history is not None
        services.history.retry_s = 3.0  # hold the replay back: the store answers before it runs
        time.sleep(0.6)  # the pending retry (0.5 s) fails and the next waits 3 s
        cluster.start_server()
        assert client.get("/health").json()["status"] == "degraded"
        later = client.post("/feedback", json={"id": served, "thumbs": "up"}).json()
        assert later["spooled"] and later["replaced"] == 1
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok")
    assert [(r[1], r[2]) for r in feedback_rows(url)] == [(0.0, True), (1.0, False)]


def test_a_replica_cut_off_alone_corrects_its_posteriors_when_another_rated_the_request_meanwhile(
    tmp_path: Path, pg_url: str
) -> None:
    """A loses PostgreSQL (its store and its follower point at a closed port); B does not.

    B rates A's request while A is away; A rates it too, offline, assuming its own earlier rating
    is the one it supersedes. At replay the store says B's was: A corrects by the difference, so
    A, B and a fresh replica end with the same posteriors.
    """
    from ops.ports import free_port

    settings_a = make_settings(tmp_path / "a", MOCK_POOL, **{"storage.url": pg_url, **THOMPSON})
    services_a = build_services(settings_a, upstream=MockUpstream())
    with TestClient(create_app(settings_a, services_a)) as a, gateway(tmp_path / "b", pg_url) as b:
        served = chat(a, "rated on both sides of a partition")
        assert a.post("/feedback", json={"id": served, "thumbs": "up"}).status_code == 200
        assert wait_for(lambda: posteriors(a) == posteriors(b))
        assert services_a.rows is not None and services_a.rows.fleet is not None
        store, follower = services_a.rows.runner, services_a.rows.fleet.follower
        closed = f"postgresql://compass:pw@127.0.0.1:{free_port()}/compass"
        (store.url, real), (follower.url, _) = (closed, store.url), (closed, follower.url)
        with psycopg.connect(pg_url, autocommit=True) as con:
            for pid in (store._con.info.backend_pid, follower._con.info.backend_pid):
                con.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert b.post("/feedback", json={"id": served, "score": 0.25}).status_code == 200
        offline = a.post("/feedback", json={"id": served, "thumbs": "down"}).json()
        assert offline["spooled"] and offline["replaced"] == 1  # it assumed its own "up"
        followed = follower.applied
        store.url = follower.url = real
        assert wait_for(lambda: a.get("/health").json()["status"] == "ok")
        assert wait_for(lambda: follower.applied > followed)  # A has B's rating now, too
        assert wait_for(lambda: posteriors(a) == posteriors(b)), (posteriors(a), posteriors(b))
        live = posteriors(a)
    assert [(r[1], r[2]) for r in feedback_rows(pg_url)] == [(1.0, True), (0.25, True), (0.0, False)]
    with gateway(tmp_path / "c", pg_url) as c:
        assert posteriors(c) == live
