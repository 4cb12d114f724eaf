"""Reliability and bad input, short versions of ``ops.faults``, ``ops.crash`` and ``ops.faults.fuzz``.

Each fault scenario runs on its own gateway process (fresh breakers, rewards and history) against
one fake upstream; the bad-input checks share one gateway with an admin key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import duckdb
import httpx
import pytest

from compass.storage.db import Database
from compass.storage.history import HistoryWriter, insert_requests
from compass.storage.retention import RetentionTask, purge_expired
from ops.crash import CrashOptions, kill_after_acks
from ops.crash import run as crash_run
from ops.fake_upstream import FakeModelBehaviour, FakeUpstream, FakeUpstreamConfig
from ops.faults.fuzz import fuzz_chat, fuzz_schema
from ops.faults.harness import ADMIN_KEY, POOL_SHAPE, admin_headers, env_offline, gateway_config, read_stream
from ops.faults.scenarios import FaultOptions, run_scenario
from ops.procs import GatewayProcess
from tests.helpers import make_settings

pytestmark = pytest.mark.slow

OPTIONS = FaultOptions(
    requests=40,
    error_rate=0.5,  # 55 % of calls to the flaky models fail: a circuit surely trips in 40 requests
    concurrency=8,
    timeout_s=0.5,
    hang_s=1.5,
    breaker_cooldown_s=1.0,
    margin_s=2.0,
    down_requests=16,
    broken_streams=4,
)


def quick() -> FakeUpstreamConfig:
    behaviour = FakeModelBehaviour(latency_ms=10.0, tokens_per_s=500.0, completion_tokens=16)
    return FakeUpstreamConfig(models={name: behaviour for name in POOL_SHAPE})


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(quick()).start()
    yield fake
    fake.stop()


def assert_passed(verdicts: list) -> None:
    failed = [v.line() for v in verdicts if not (v.passed or v.skipped)]
    assert not failed, "\n".join(failed)


def test_flaky_models_fall_back_with_no_client_failure(upstream: FakeUpstream, tmp_path: Path) -> None:
    verdicts = run_scenario("flaky", upstream.url, OPTIONS, "direct", tmp_path)
    assert_passed(verdicts)
    absorbed = verdicts[0].figures["absorbed_failures"]
    assert sum(absorbed.values()) > 0  # the flaky models really failed, and clients never saw it


def test_all_models_down_is_a_quick_clean_502_or_504(upstream: FakeUpstream, tmp_path: Path) -> None:
    verdicts = run_scenario("all_down", upstream.url, OPTIONS, "direct", tmp_path)
    assert_passed(verdicts)
    hang = next(v for v in verdicts if v.name == "(b) no hangs")
    assert hang.figures["slowest_s"] <= hang.figures["bound_s"]


def test_broken_stream_is_an_error_event_a_row_and_a_zero_reward(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    verdicts = run_scenario("broken_stream", upstream.url, OPTIONS, "direct", tmp_path)
    assert_passed(verdicts)
    assert any(v.name.startswith("(d)") for v in verdicts)


def test_sigterm_lets_in_flight_requests_finish_and_flushes_rows(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # retention on: its periodic task must not get in the way of a graceful stop
    config = gateway_config(upstream.url, storage={"flush_interval_ms": 200, "retention_days": 30})
    gateway = GatewayProcess(tmp_path, config, env=env_offline()).start()
    results: list[httpx.Response] = []
    marker = f"slow-{uuid.uuid4().hex}"

    def ask(index: int) -> None:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": f"{marker} {index} [[fake:delay_ms=1500]]"}],
            "stream": index % 2 == 1,
        }
        results.append(httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20  # all six are waiting on the upstream (a busy machine is slow)
    while time.monotonic() < deadline:
        if sum(marker in str(body.get("messages")) for body in list(upstream.history)) >= 6:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    code = gateway.stop()
    for thread in threads:
        thread.join(30)
    assert code in (0, -15), gateway.log()
    assert [r.status_code for r in results] == [200] * 6
    ids = [
        r.json()["id"] if not r.text.startswith("data:") else read_stream(r.text).request_id for r in results
    ]
    assert all(read_stream(r.text).done for r in results if r.text.startswith("data:"))
    with duckdb.connect(str(tmp_path / "compass.duckdb"), read_only=True) as con:
        stored = {row[0]: row[1] for row in con.execute("SELECT id, status FROM requests").fetchall()}
    assert {i: stored.get(i) for i in ids} == {i: 200 for i in ids}
    assert not list((tmp_path / "compass.journal").glob("*.jsonl"))  # a clean stop leaves no journal


@pytest.mark.parametrize("durability", ["journal", "strict"])
def test_kill_9_under_load_loses_no_acknowledged_request(durability: str) -> None:
    """A real server killed mid-load, restarted on the same home: every 2xx has its row."""
    options = CrashOptions(
        durability=durability, clients=6, warm_s=2.0, load_s=2.5, full_layers=False, speedup=8
    )
    verdicts = crash_run(options)
    assert_passed(verdicts)
    history = next(v for v in verdicts if v.name.startswith("every 2xx"))
    assert history.figures["acked"] > 0 and history.figures["missing"] == 0


def test_kill_9_right_after_30_acknowledged_requests_loses_none_by_default(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.state.config = quick()
    verdict = kill_after_acks(upstream.url, tmp_path, n=30, concurrency=4)  # default storage settings
    assert verdict.passed, verdict.line()
    assert verdict.figures["acked"] == 30 and verdict.figures["missing"] == 0


def test_the_kill_check_sees_what_batched_durability_loses(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The same check against ``batched``: the last replies are still in the 500 ms gather window."""
    upstream.state.config = quick()
    storage = {"durability": "batched", "flush_interval_ms": 500}
    verdict = kill_after_acks(upstream.url, tmp_path, n=30, concurrency=4, storage=storage)
    assert verdict.figures["acked"] == 30 and verdict.figures["missing"] >= 1, verdict.line()


@pytest.fixture(scope="module")
def secured_gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    upstream.state.config = quick()  # the fault scenarios leave the shared fake misbehaving
    config = gateway_config(
        upstream.url, timeout_s=10, admin_key=ADMIN_KEY, storage={"flush_interval_ms": 20}
    )
    with GatewayProcess(tmp_path_factory.mktemp("fuzz"), config, env=env_offline()) as gateway:
        yield gateway.url


def test_schemathesis_finds_no_500_and_only_openai_errors(secured_gateway: str) -> None:
    report = fuzz_schema(secured_gateway, max_examples=12, seed_value=0, headers=admin_headers(ADMIN_KEY))
    assert report.sent > 200 and not report.problems, report.problems


def test_fuzzed_chat_bodies_get_no_500(secured_gateway: str) -> None:
    report = fuzz_chat(secured_gateway, examples=100, seed_value=0, headers=admin_headers(ADMIN_KEY))
    assert report.passed, report.problems
    assert report.by_status.get(200, 0) > 0 and report.by_status.get(400, 0) > 0  # both kinds were sent


@pytest.mark.parametrize("body", [b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"x": "\xff"}'])
def test_undecodable_bodies_are_400(secured_gateway: str, body: bytes) -> None:
    response = httpx.post(
        f"{secured_gateway}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", **admin_headers(ADMIN_KEY)},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_huge_stats_offset_is_a_400(secured_gateway: str) -> None:
    response = httpx.get(
        f"{secured_gateway}/stats/raw", params={"offset": 2**70}, headers=admin_headers(ADMIN_KEY)
    )
    assert response.status_code == 400


def test_huge_timeline_window_is_a_400(secured_gateway: str) -> None:
    response = httpx.get(
        f"{secured_gateway}/admin/api/timeline", params={"window_s": 1e16}, headers=admin_headers(ADMIN_KEY)
    )
    assert response.status_code == 400


def history_rows(now: dt.datetime) -> list[dict]:
    rows = []
    for index, age_days in enumerate([40, 35, 1]):
        rows.append(
            {
                "id": f"r{index}",
                "created_at": now - dt.timedelta(days=age_days),
                "tenant": "local",
                "stream": False,
                "model": "demo-small",
                "messages": [{"role": "user", "content": f"secret {index}"}],
                "messages_hash": f"h{index}",
                "params": {"metadata": {"k": "v"}},
                "response_content": "sha256:already" if index == 1 else f"answer {index}",
                "prompt_tokens": 10 + index,
                "cost_usd": 0.5,
                "status": 200,
                "demo": False,
            }
        )
    return rows


@pytest.mark.parametrize("store_content", ["full", "hash"])
def test_retention_purges_old_content_and_keeps_numbers(tmp_path: Path, store_content: str) -> None:
    now = dt.datetime(2026, 1, 31, 12, 0)
    db = Database(tmp_path / "h.duckdb")
    db.open()
    try:
        db.run_sync(insert_requests, history_rows(now))
        db.run_sync(
            lambda con: con.execute(
                "INSERT INTO rewards (id, created_at, ts, request_id, context, model, reward, source,"
                " comment)"
                " VALUES ('w0', ?, 0, 'r0', 'simple', 'demo-small', 1.0, 'feedback', 'nice'),"
                " ('w2', ?, 0, 'r2', 'simple', 'demo-small', 0.0, 'feedback', 'bad')",
                [now - dt.timedelta(days=40), now - dt.timedelta(hours=1)],
            )
        )
        changed = db.run_sync(purge_expired, now - dt.timedelta(days=30), store_content)
        rows = db.run_sync(
            lambda con: con.execute(
                "SELECT id, messages, params, response_content, messages_hash, prompt_tokens, cost_usd"
                " FROM requests ORDER BY id"
            ).fetchall()
        )
        comments = db.run_sync(
            lambda con: con.execute("SELECT comment, reward FROM rewards ORDER BY id").fetchall()
        )
        again = db.run_sync(purge_expired, now - dt.timedelta(days=30), store_content)
    finally:
        db.close()
    old_answer = None if store_content == "full" else "sha256:" + hashlib.sha256(b"answer 0").hexdigest()
    assert rows[0] == ("r0", None, None, old_answer, "h0", 10, 0.5)
    assert rows[1][1:3] == (None, None) and rows[1][3] == (
        None if store_content == "full" else "sha256:already"
    )
    assert rows[2][1] is not None and rows[2][3] == "answer 2"  # recent rows are untouched
    assert comments == [(None, 1.0), ("bad", 0.0)]
    assert changed["messages"] == 2 and changed["comments"] == 1
    assert not any(again.values())  # idempotent


async def test_retention_task_uses_the_configured_period(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"storage.retention_days": 30})
    db = Database(tmp_path / "t.duckdb")
    db.open()
    now = dt.datetime(2026, 1, 31, 12, 0)
    await db.run(insert_requests, history_rows(now))
    services = SimpleNamespace(settings=settings, db=db, cache=None)
    task = RetentionTask(services)  # type: ignore[arg-type]
    try:
        assert task.interval_s == 3600  # 1/24 of 30 days, capped at an hour
        result = await task.run_once(now)
        assert result["messages"] == 2 and task.last_result == result
        unset = SimpleNamespace(settings=make_settings(tmp_path), db=db, cache=None)
        assert RetentionTask(unset).start()._task is None  # type: ignore[arg-type]  # no retention_days
    finally:
        await task.stop()
        db.close()


def test_a_half_read_result_on_the_connection_loses_no_history_row(tmp_path: Path) -> None:
    """Regression: another caller's ``fetchone()`` left a result open and DuckDB refused the insert."""
    db = Database(tmp_path / "h.duckdb")
    db.open()
    try:
        rows = history_rows(dt.datetime(2026, 1, 31))
        db.run_sync(insert_requests, rows[:1])
        db.run_sync(lambda con: con.execute("SELECT id FROM requests WHERE id = 'r0'").fetchone())
        db.run_sync(insert_requests, rows[1:])
        count = db.run_sync(lambda con: con.execute("SELECT count(*) FROM requests").fetchall())
    finally:
        db.close()
    assert count == [(3,)]


def test_small_and_large_batches_store_the_same_values(tmp_path: Path) -> None:
    """One or two rows go in as VALUES, more as an Arrow table: the stored rows must not differ."""
    from compass.storage.history import SMALL_BATCH

    rows = history_rows(dt.datetime(2026, 1, 31))
    stored = []
    for name, batches in (("small", [[r] for r in rows[:3]]), ("large", [rows[:3]])):
        assert all(len(b) <= SMALL_BATCH for b in batches) == (name == "small")
        db = Database(tmp_path / f"{name}.duckdb")
        db.open()
        try:
            for batch in batches:
                db.run_sync(insert_requests, batch)
            stored.append(
                db.run_sync(
                    lambda con: con.execute(
                        "SELECT * EXCLUDE (created_at), created_at::VARCHAR, messages->>'$[0].content',"
                        " typeof(messages) FROM requests ORDER BY id"
                    ).fetchall()
                )
            )
        finally:
            db.close()
    assert stored[0] == stored[1] and len(stored[0]) == 3
    assert stored[0][0][-2:] == ("secret 0", "JSON")


async def test_flush_returns_under_steady_traffic(tmp_path: Path) -> None:
    """Regression: flush() waited for an empty queue, so /stats and SQL hung while traffic lasted."""
    db = Database(tmp_path / "f.duckdb")
    db.open()
    writer = HistoryWriter(db, flush_interval_ms=20)
    writer.start()
    template = history_rows(dt.datetime(2026, 1, 31))[2]
    sent = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal sent
        while not stop.is_set():
            writer.record({**template, "id": f"t{sent}"})
            sent += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(traffic())
    try:
        await asyncio.sleep(0.2)
        queued_before = sent
        await asyncio.wait_for(writer.flush(), timeout=5)
        stored = (await db.run(lambda con: con.execute("SELECT count(*) FROM requests").fetchall()))[0][0]
    finally:
        stop.set()
        await task
        await writer.close()
        db.close()
    assert stored >= queued_before > 0
