"""Two real gateway processes (``compass serve`` on loopback) sharing one real PostgreSQL 15.

Each replica keeps its own in-memory views (posteriors, FAISS index, key table) and follows the
other's changes through ``fleet_events`` (LISTEN/NOTIFY plus a poll). Every propagation below
must be visible on the other replica within 1 s of the change being acknowledged, the issue's
bound; the figures themselves are measured by ops/bench/fleet_propagation.py, not here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from ops.fake_upstream import FakeUpstream, demo_config
from ops.procs import GatewayProcess
from tests.helpers import demo_pool, posteriors
from tests.postgres import Cluster

ADMIN = "adm-fleet-test-key"
START_S = 300  # each replica loads the MiniLM; two shared cores can take minutes
BOUND_S = 1.0  # the propagation bound


def admin(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=60, headers={"authorization": f"Bearer {ADMIN}"})


def client(gateway: GatewayProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=60, headers={"authorization": f"Bearer {key}"})


def within(check: Callable[[], bool], bound_s: float = BOUND_S) -> float:
    """Poll ``check`` until it holds; the seconds it took. Fails past ``bound_s``."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > bound_s:
            raise AssertionError(f"not propagated within {bound_s}s")
        time.sleep(0.01)


def ask(http: httpx.Client, text: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


class Fleet:
    def __init__(self, root: Path, url: str, upstream: FakeUpstream) -> None:
        self.root, self.url, self.upstream = root, url, upstream
        self.a = self.replica("a")
        self.b = self.replica("b")

    def replica(self, name: str) -> GatewayProcess:
        config = {
            "models": demo_pool(self.upstream),
            "selector": {"backend": "thompson"},
            "classifier": {"backend": "length"},
            "cache": {"enabled": True},
            "security": {"admin_key": ADMIN},
            "storage": {"url": self.url, "flush_interval_ms": 5},
        }
        return GatewayProcess(self.root / name, config)

    def restart_b(self, fresh_home: bool) -> None:
        self.b.stop()
        self.b = self.replica("b2" if fresh_home else "b")
        self.b.start(timeout_s=START_S)


@pytest.fixture(scope="module")
def fleet(postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    postgres.psql('DROP DATABASE IF EXISTS "t_fleet_replicas"')
    postgres.psql('CREATE DATABASE "t_fleet_replicas"')
    upstream = FakeUpstream(demo_config()).start()
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), postgres.url("t_fleet_replicas"), upstream)
    try:
        fleet.a.start(timeout_s=START_S)
        fleet.b.start(timeout_s=START_S)
        yield fleet
    finally:
        with contextlib.suppress(Exception):
            fleet.a.stop()
        with contextlib.suppress(Exception):
            fleet.b.stop()
        upstream.stop()


def status_of(gateway: GatewayProcess, key: str) -> int:
    with client(gateway, key) as http:
        return http.get("/v1/models").status_code


def test_a_key_made_or_revoked_on_one_replica_is_honoured_by_the_other(fleet: Fleet) -> None:
    with admin(fleet.a) as a:
        made = a.post("/admin/api/keys", json={"tenant": "keys-t"})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    within(lambda: status_of(fleet.b, key) == 200)
    with admin(fleet.b) as b:
        assert b.delete(f"/admin/api/keys/{key_id}").status_code == 200
    within(lambda: status_of(fleet.a, key) == 401)
    assert status_of(fleet.b, key) == 401


def test_compass_keys_on_the_fleet_store_reaches_every_replica(fleet: Fleet, tmp_path: Path) -> None:
    from compass.cli.main import main

    env = {"COMPASS_HOME": str(tmp_path), "COMPASS_DATABASE_URL": fleet.url}
    created = CliRunner().invoke(main, ["keys", "create", "--tenant", "cli-t"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.split()[-1]
    key_id = created.output.split()[1]
    within(lambda: status_of(fleet.a, key) == 200 and status_of(fleet.b, key) == 200)
    revoked = CliRunner().invoke(main, ["keys", "revoke", key_id], env=env)
    assert revoked.exit_code == 0, revoked.output
    within(lambda: status_of(fleet.a, key) == 401 and status_of(fleet.b, key) == 401)


def test_feedback_on_one_replica_moves_the_others_posteriors(fleet: Fleet) -> None:
    with admin(fleet.a) as a, admin(fleet.b) as b:
        served = [ask(a, f"fleet reward question {i}").json()["id"] for i in range(4)]
        served += [ask(b, f"fleet reward question {i + 4}").json()["id"] for i in range(4)]
        for i, request_id in enumerate(served):
            other = b if i % 2 == 0 else a  # feedback through either replica, for either's request
            before = posteriors(a if other is b else b)
            thumbs = "up" if i % 3 else "down"
            assert other.post("/feedback", json={"id": request_id, "thumbs": thumbs}).status_code == 200
            watcher = a if other is b else b
            within(lambda w=watcher, p=before: posteriors(w) != p)
        # feedback at once for a request the other replica has only just answered (its row may
        # not be flushed yet): accepted, not a 404
        fresh = ask(a, "fleet reward question, answered just now").json()["id"]
        assert b.post("/feedback", json={"id": fresh, "thumbs": "up"}).status_code == 200
        # a repeat supersedes the earlier feedback on every replica, not only where it was sent
        assert b.post("/feedback", json={"id": served[1], "score": 0.25}).status_code == 200
        within(lambda: posteriors(a) == posteriors(b))
        assert posteriors(a) == posteriors(b)


def test_a_restarted_replica_rebuilds_the_same_posteriors(fleet: Fleet) -> None:
    with admin(fleet.a) as a:
        request_id = ask(a, "fleet restart question").json()["id"]
        assert a.post("/feedback", json={"id": request_id, "score": 0.75}).status_code == 200
        live = posteriors(a)
    assert any(models for models in live.values())
    fleet.restart_b(fresh_home=True)  # an empty home: everything comes from PostgreSQL
    with admin(fleet.b) as b, admin(fleet.a) as a:
        assert posteriors(b) == live == posteriors(a)


def entries_in_memory(gateway: GatewayProcess) -> int:
    with admin(gateway) as http:
        return int(http.get("/admin/api/cache").json()["entries"])


def entries_in_store(url: str) -> int:
    with psycopg.connect(url) as con:
        return int(con.execute("SELECT count(*) FROM cache_entries").fetchone()[0])


def stored(url: str, request_id: str) -> None:
    """Wait for the replica that answered to finish storing (it stores after answering)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(url) as con:
            sql = "SELECT count(*) FROM cache_entries WHERE request_id = %s"
            if con.execute(sql, [request_id]).fetchone()[0]:
                return
        time.sleep(0.01)
    raise AssertionError(f"the answer to {request_id} was never stored")


def test_an_answer_cached_on_one_replica_hits_on_the_other_for_its_tenant_only(fleet: Fleet) -> None:
    with admin(fleet.a) as a:
        k1 = a.post("/admin/api/keys", json={"tenant": "cache-t1"}).json()["key"]
        k2 = a.post("/admin/api/keys", json={"tenant": "cache-t2"}).json()["key"]
    within(lambda: status_of(fleet.b, k1) == 200 and status_of(fleet.b, k2) == 200)
    question = "What is the tallest mountain in the Alps?"
    with client(fleet.a, k1) as a1, client(fleet.b, k1) as b1, client(fleet.b, k2) as b2:
        first = ask(a1, question)
        assert first.headers["x-compass-cache"] == "miss"
        stored(fleet.url, first.json()["id"])  # the clock starts once A has cached it
        within(lambda: entries_in_memory(fleet.b) == entries_in_store(fleet.url))
        hit = ask(b1, question)
        assert hit.headers["x-compass-cache"] == "exact"
        assert hit.json()["routing"]["cache"]["source_request_id"] == first.json()["id"]
        assert ask(b2, question).headers["x-compass-cache"] == "miss"  # another tenant: never shared
        paraphrase = ask(b1, "What's the tallest mountain in the Alps?")
        assert paraphrase.headers["x-compass-cache"] == "semantic"
        assert paraphrase.json()["routing"]["cache"]["source_request_id"] == first.json()["id"]


def test_a_thumbs_down_on_one_replica_stops_the_other_serving_it(fleet: Fleet) -> None:
    with admin(fleet.a) as a:
        key = a.post("/admin/api/keys", json={"tenant": "evict-t"}).json()["key"]
    within(lambda: status_of(fleet.b, key) == 200)
    question = "Name the largest moon of Saturn."
    with client(fleet.a, key) as a1, client(fleet.b, key) as b1:
        first = ask(a1, question)
        stored(fleet.url, first.json()["id"])
        within(lambda: entries_in_memory(fleet.b) == entries_in_store(fleet.url))
        assert ask(a1, question).headers["x-compass-cache"] == "exact"
        served = ask(b1, question)
        assert served.headers["x-compass-cache"] == "exact"
        verdict = b1.post("/feedback", json={"id": served.json()["id"], "thumbs": "down"})
        assert verdict.status_code == 200 and verdict.json()["cache_evicted"] >= 1, verdict.text
        within(lambda: entries_in_memory(fleet.a) == entries_in_store(fleet.url))
        again = ask(a1, question)
        assert again.headers["x-compass-cache"] == "miss", again.json()["routing"]
