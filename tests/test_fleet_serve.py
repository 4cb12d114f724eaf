"""Real gateway processes on one real PostgreSQL 15: ``compass serve --workers N`` and the fleet-wide
rate limit (one budget per key for every replica, not one each)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from compass.storage.keys import hash_key
from compass.storage.pg_migrations import migrate as pg_migrate
from ops.fake_upstream import FakeUpstream, instant_config
from ops.procs import GatewayProcess

MODELS = {"small": "simple", "medium": "medium", "large": "complex"}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(instant_config(*MODELS)).start()
    try:
        yield fake
    finally:
        fake.stop()


def fleet_config(upstream: FakeUpstream, pg_url: str, **extra: Any) -> dict[str, Any]:
    pool = [
        {"name": n, "litellm_model": f"openai/{n}", "api_base": upstream.url, "api_key": "k", "tier": t}
        for n, t in MODELS.items()
    ]
    return {
        "models": pool,
        "classifier": {"backend": "length"},
        "cache": {"enabled": False},
        "storage": {"url": pg_url, "flush_interval_ms": 5},
        **extra,
    }


def chat(client: httpx.Client, text: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.post(
        CHAT, json={"model": "auto", "messages": [{"role": "user", "content": text}]}, headers=headers
    )


def test_workers_share_one_port_and_one_store(tmp_path: Path, upstream: FakeUpstream, pg_url: str) -> None:
    with GatewayProcess(
        tmp_path / "home", fleet_config(upstream, pg_url), args=["--workers", "2"]
    ) as gateway:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:  # each new connection may reach either worker
            pids.add(httpx.get(f"{gateway.url}/health", timeout=10).json()["pid"])
        assert len(pids) == 2 and gateway.process is not None and gateway.process.pid not in pids

        def one(i: int) -> int:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:  # a connection each
                return chat(client, f"question {i}").status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(40))) == [200] * 40
        # any worker answers /stats and SQL with every worker's rows
        for _ in range(4):
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                assert client.get("/stats").json()["total_calls"] >= 40 - 8  # others may still be flushing
        time.sleep(0.5)
        with psycopg.connect(pg_url) as con:
            assert con.execute("SELECT count(*) FROM requests").fetchone()[0] == 40
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert client.get("/stats").json()["total_calls"] == 40
            rows = client.post("/admin/api/sql", json={"sql": "SELECT count(*) FROM requests"}).json()["rows"]
            assert rows == [[40]]
        workers = sorted(p.name for p in (tmp_path / "home" / "workers").iterdir())
        assert workers == sorted(str(p) for p in pids)  # each worker's scratch, none on the home's file
    assert not (tmp_path / "home" / "workers").exists()  # removed at shutdown


def worker_of_each_connection(port: int, n: int, workers: set[int]) -> list[int]:
    """Queue ``n`` connections while every worker is stopped (as a burst from wrk finds them busy),
    let the workers go one after the other, then ask each connection which worker holds it."""
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:  # the kernel completes the handshakes into the accept queue(s) meanwhile
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    finally:
        for pid in sorted(workers):  # one wakes first, as one does under load
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.3)
    try:
        pids = []
        for conn in conns:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                data += conn.recv(65536)
            pids.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
        return pids
    finally:
        for conn in conns:
            conn.close()


def test_a_burst_of_connections_is_spread_over_the_workers(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    """With one listening socket shared by the workers, the first to wake accepted every queued
    connection (wrk's 64 at once: 61 on one worker of two in the fleet_workers benchmark); with a
    SO_REUSEPORT socket per worker the kernel queues each connection on one worker's socket."""
    with GatewayProcess(
        tmp_path / "home", fleet_config(upstream, pg_url), args=["--workers", "2"]
    ) as gateway:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers listen
            pids.add(httpx.get(f"{gateway.url}/health", timeout=10).json()["pid"])
        counts = collections.Counter(worker_of_each_connection(gateway.port, 48, pids))
        assert len(counts) == 2 and min(counts.values()) >= 10, counts  # binomial(48, 1/2): P(< 10) ~ 1e-5
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert chat(client, "after the burst").status_code == 200


def fleet_keys(pg_url: str, keys: dict[str, float]) -> dict[str, str]:
    """Client keys with their budgets in the fleet's key table, which every replica reads."""
    secrets = {f"key_{i}": f"sk-compass-fleet-test-{i}-{'x' * 20}" for i in range(len(keys))}
    with psycopg.connect(pg_url, autocommit=True) as con:
        pg_migrate(con)
        for (key_id, secret), rpm in zip(secrets.items(), keys.values(), strict=True):
            con.execute(
                "INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at, requests_per_minute)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [key_id, f"tenant-{key_id}", hash_key(secret), secret[:10], dt.datetime(2026, 1, 1), rpm],
            )
    return dict(zip(keys, secrets.values(), strict=True))


def test_requests_per_minute_is_one_budget_per_key_across_two_replicas(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    keys = fleet_keys(pg_url, {"slow": 40.0, "fast": 90.0})
    config = fleet_config(upstream, pg_url, security={"admin_key": "sk-admin-fleet-test-0123456789"})
    with GatewayProcess(homes[0], config) as a, GatewayProcess(homes[1], config) as b:
        clients = [httpx.Client(base_url=g.url, timeout=30) for g in (a, b)]
        try:
            for client in clients:  # both replicas up and the keys known
                assert chat(client, "warm-up", keys["fast"]).status_code == 200
            start = time.monotonic()
            allowed = {name: 0 for name in keys}
            refused = {name: 0 for name in keys}
            for i in range(360):  # alternate replicas and keys, well over either budget
                name = "slow" if i % 2 else "fast"
                response = chat(clients[(i // 2) % 2], f"q{i}", keys[name])
                if response.status_code == 200:
                    allowed[name] += 1
                else:
                    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
                    assert response.json()["error"]["type"] == "rate_limit_error"
                    refused[name] += 1
            elapsed = time.monotonic() - start
        finally:
            for client in clients:
                client.close()
    for name, rpm in (("slow", 40.0), ("fast", 90.0)):
        # the bucket: a burst of one minute's budget, refilled at rpm/60 a second (fast spent 1 on warm-up)
        budget = rpm + elapsed * rpm / 60 - (2 if name == "fast" else 0)
        assert abs(allowed[name] - budget) <= 0.05 * budget + 1, (name, allowed, refused, elapsed)
        assert allowed[name] < 1.5 * rpm  # not one budget per replica (that would allow about 2 x rpm)
    with psycopg.connect(pg_url) as con:
        buckets = dict(con.execute("SELECT bucket, tokens FROM rate_buckets").fetchall())
    assert set(buckets) == {"key_0", "key_1"} and all(t < 2 for t in buckets.values())


def test_workers_share_keys_and_keep_the_spool_in_the_home(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    """A key made through one worker is honoured by the other; the outage spool outlives the workers."""
    admin = {"authorization": "Bearer sk-admin-fleet-test-0123456789"}
    config = fleet_config(upstream, pg_url, security={"admin_key": admin["authorization"][7:]})
    home = tmp_path / "home"
    with GatewayProcess(home, config, args=["--workers", "2"]) as gateway:
        made = httpx.post(f"{gateway.url}/admin/api/keys", json={"tenant": "acme"}, headers=admin, timeout=10)
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        time.sleep(1.0)  # the bound for every replica (and worker) to know a new key
        answered: dict[int, int] = {}
        for i in range(40):  # a new connection each, so both workers take some
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                pid = client.get("/health").json()["pid"]
                answered[pid] = answered.get(pid, 0) + 1
                assert chat(client, f"keyed question {i}", key).status_code == 200
        assert len(answered) == 2
        assert (home / "spool").is_dir() and not (home / "workers" / "spool").exists()
    assert (home / "spool").is_dir()  # the scratch went, the spool root stays


def test_a_stored_response_is_found_by_the_other_replica(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    """``previous_response_id`` and ``GET /v1/responses/{id}`` work whichever replica stored it."""
    config = fleet_config(upstream, pg_url)
    config["storage"] = {**config["storage"], "store_content": "full"}
    with GatewayProcess(tmp_path / "a", config) as a, GatewayProcess(tmp_path / "b", config) as b:
        ask = {"model": "auto", "input": "Name a colour."}
        first = httpx.post(f"{a.url}/v1/responses", json=ask, timeout=30)
        assert first.status_code == 200, first.text
        resp_id = first.json()["id"]
        time.sleep(0.3)  # A's batched write (50 ms window)
        got = httpx.get(f"{b.url}/v1/responses/{resp_id}", timeout=30)
        assert got.status_code == 200 and got.json()["output"] == first.json()["output"]
        follow = httpx.post(
            f"{b.url}/v1/responses",
            json={"model": "auto", "input": "And another?", "previous_response_id": resp_id},
            timeout=30,
        )
        assert follow.status_code == 200, follow.text
        assert follow.json()["previous_response_id"] == resp_id
        missing = httpx.get(f"{b.url}/v1/responses/resp_{'0' * 32}", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "response_not_found"
