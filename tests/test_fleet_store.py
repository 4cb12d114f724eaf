"""The fleet store on a real, throwaway PostgreSQL 15 (tests/postgres.py): config, migrations, rows.

No skip: when PostgreSQL cannot start, the ``postgres`` fixture raises and these tests fail.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time

import psycopg
import pytest

from compass.config import load_settings
from compass.errors import ConfigError
from compass.storage.history import REQUEST_COLUMNS, utcnow
from compass.storage.pg_migrations import migrate, migration_names
from compass.storage.pg_rows import insert_requests_pg, insert_reward_pg, load_reward_events_pg
from compass.storage.postgres import PostgresStore, connect, redact
from layers.bandit.base import RewardEvent
from tests.postgres import free_port


def test_url_from_environment_and_default_is_embedded() -> None:
    assert load_settings(environ={}).storage.url is None
    url = "postgresql://compass:p#a:s@w0rd@127.0.0.1:5432/compass"
    assert load_settings(environ={"COMPASS_DATABASE_URL": url}).storage.url == url  # taken verbatim


def test_url_with_wrong_scheme_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"storage\.url.*postgresql://.*'mysql'"):
        load_settings(environ={"COMPASS_DATABASE_URL": "mysql://x@h/db"})


def _open_error(url: str, timeout_s: float = 2.0) -> tuple[str, float]:
    store = PostgresStore(url, connect_timeout_s=timeout_s)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        store.open()
    return str(info.value), time.monotonic() - started


def test_unreachable_port_is_named_quickly() -> None:
    message, took = _open_error(f"postgresql://compass:x@127.0.0.1:{free_port()}/compass")
    assert "cannot reach the PostgreSQL server" in message and "storage.url" in message
    assert took < 3


def test_silent_server_times_out_instead_of_hanging() -> None:
    """A listener that accepts TCP and never answers: only connect_timeout ends the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        message, took = _open_error(f"postgresql://compass:x@127.0.0.1:{port}/compass", timeout_s=1)
    assert "no answer from the server within storage.connect_timeout_s" in message
    assert 0.9 < took < 4


def test_unknown_host_and_non_postgres_server_are_named() -> None:
    message, _ = _open_error("postgresql://compass:x@nohost.invalid:5432/compass")
    assert "cannot reach the PostgreSQL server" in message
    with socket.socket() as http:  # answers every connection with bytes that are not PostgreSQL's
        http.bind(("127.0.0.1", 0))
        http.listen(8)
        port = http.getsockname()[1]

        def answer() -> None:
            conn, _ = http.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            time.sleep(0.5)
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        message, _ = _open_error(f"postgresql://compass:x@127.0.0.1:{port}/compass?sslmode=disable")
    assert "not PostgreSQL" in message, message


def test_wrong_password_and_missing_database_are_named(postgres) -> None:
    message, _ = _open_error(postgres.url("compass", password="wrong"))
    assert "user name or password" in message
    assert "wrong" not in message  # the password is redacted
    message, _ = _open_error(postgres.url("no_such_db"))
    assert "database does not exist" in message


def test_redact_hides_password() -> None:
    assert redact("postgresql://u:secret@h:1/d") == "postgresql://u:***@h:1/d"


def test_migrations_apply_once_and_are_recorded(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    assert store.open() == migration_names()
    store.close()
    store = PostgresStore(pg_url)
    assert store.open() == []
    tables = store.run_sync(
        lambda con: {r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    )
    store.close()
    assert {"requests", "rewards", "cache_entries", "cache_stats", "api_keys", "_migrations"} <= tables


def _migrate_in_process(url: str, queue: multiprocessing.Queue) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        queue.put(migrate(con))


def test_replicas_migrating_together_apply_each_migration_once(pg_url: str) -> None:
    """Threads and processes start at once; the advisory lock makes exactly one apply each migration."""
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def in_thread() -> None:
        with psycopg.connect(pg_url, autocommit=True) as con:
            barrier.wait()
            results.append(migrate(con))

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_process, args=(pg_url, queue)) for _ in range(3)]
    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    results += [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    applied = [name for r in results for name in r]
    assert sorted(applied) == sorted(migration_names())  # each exactly once, across 7 migrators
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(migration_names())


def _row(i: int) -> dict:
    row = {name: None for name in REQUEST_COLUMNS}
    row.update(
        id=f"req-{i}", created_at=utcnow(), tenant="t1", stream=False, status=200, demo=False,
        model="m-small", messages=[{"role": "user", "content": f"hi {i} \t\n\\ é"}],
        routing={"why": "test"}, prompt_tokens=3, total_ms=1.5,
    )  # fmt: skip
    return row


def test_request_rows_round_trip_through_copy(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.open()
    rows = [_row(i) for i in range(50)]
    store.run_sync(insert_requests_pg, rows)
    got = store.run_sync(
        lambda con: con.execute(
            "SELECT id, messages, routing, prompt_tokens, total_ms FROM requests ORDER BY id"
        ).fetchall()
    )
    store.close()
    assert len(got) == 50
    first = dict((r[0], r) for r in got)["req-7"]
    assert first[1] == [{"role": "user", "content": "hi 7 \t\n\\ é"}]
    assert first[2] == {"why": "test"} and first[3] == 3 and first[4] == 1.5


def test_reward_rows_fold_in_order_and_follow_a_watermark(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.open()
    events = [
        RewardEvent(request_id=f"r{i}", context="general", model="m-small", reward=i % 2, ts=100.0 + i)
        for i in range(5)
    ]
    for event in events:
        store.run_sync(insert_reward_pg, event, "t1", None)
    store.run_sync(
        insert_reward_pg,
        RewardEvent(request_id="x", context="unrouted", model="m", reward=1, ts=1),
        None,
        None,
    )
    loaded, mark = store.run_sync(load_reward_events_pg)
    assert loaded == events  # unrouted rows are stored, not learned from
    later = RewardEvent(request_id="r9", context="general", model="m-large", reward=1.0, ts=200.0)
    store.run_sync(insert_reward_pg, later, "t1", "good")
    newer, mark2 = store.run_sync(load_reward_events_pg, mark)
    store.close()
    assert newer == [later] and mark2 > mark


def test_connect_is_autocommit(pg_url: str) -> None:
    con = connect(pg_url)
    try:
        assert con.autocommit
    finally:
        con.close()
