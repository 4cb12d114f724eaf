"""Following the fleet's change log on a real PostgreSQL 15: no event skipped or applied twice,
LISTEN wakes a follower, and API keys live in PostgreSQL with ``compass keys`` writing there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from compass.storage.fleet_log import Position, current_position, emit, read_new
from compass.storage.follower import Follower
from compass.storage.keys import active_key_hashes, create_key, hash_key, list_keys, revoke_key
from compass.storage.pg_migrations import migrate


def migrated(url: str) -> psycopg.Connection:
    con = psycopg.connect(url, autocommit=True)
    migrate(con)
    return con


def test_a_late_commit_below_the_watermark_is_read_once(pg_url: str) -> None:
    """The gap the identity watermark has: id 1 commits after id 2 and must still be read."""
    reader, slow, fast = migrated(pg_url), psycopg.connect(pg_url), psycopg.connect(pg_url, autocommit=True)
    position = Position()
    emit(slow, "a", "reward", {"n": 1})  # an open transaction holds id 1
    fast.execute("BEGIN")
    emit(fast, "b", "reward", {"n": 2})
    fast.execute("COMMIT")
    assert [e.payload["n"] for e in read_new(reader, position)] == [2]
    naive_watermark = 2  # a follower of "id > watermark" has moved past 1 here
    slow.commit()
    assert [e.payload["n"] for e in read_new(reader, position)] == [1]
    assert read_new(reader, position) == []  # neither applied twice
    later = reader.execute("SELECT id FROM fleet_events WHERE id > %s", [naive_watermark]).fetchall()
    assert later == []  # ...and would never see 1
    assert position.seen == {} or min(position.seen.values()) >= position.xmin


def test_a_rolled_back_change_announces_nothing_and_blocks_nothing(pg_url: str) -> None:
    reader, writer = migrated(pg_url), psycopg.connect(pg_url)
    position = Position()
    emit(writer, "a", "keys", {})
    writer.rollback()
    with writer.transaction():
        emit(writer, "a", "keys", {"after": True})
    assert [e.payload for e in read_new(reader, position)] == [{"after": True}]


def test_the_start_position_marks_what_the_loaded_state_has_seen(pg_url: str) -> None:
    con = migrated(pg_url)
    emit(con, "a", "reward", {"n": 1})
    con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    position = current_position(con)
    con.execute("COMMIT")
    emit(con, "a", "reward", {"n": 2})
    assert [e.payload["n"] for e in read_new(con, position)] == [2]


async def test_a_follower_wakes_on_notify_and_skips_its_own_events(pg_url: str) -> None:
    con = migrated(pg_url)
    follower = Follower(pg_url, origin="me", poll_s=30.0)  # a poll this slow: only NOTIFY wakes it
    seen: list[Any] = []
    arrived = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        seen.extend(e.payload for e in batch)
        arrived.set()

    follower.on("keys", handler)
    con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    start = current_position(con)
    con.execute("COMMIT")
    follower.start(start)
    try:
        await asyncio.sleep(0.2)  # the follower is waiting in LISTEN now
        emit(con, "me", "keys", {"own": True})
        emit(con, "other", "keys", {"own": False})
        await asyncio.wait_for(arrived.wait(), timeout=5)
        assert seen == [{"own": False}]
    finally:
        await asyncio.to_thread(follower.stop)
    assert follower.applied == 1


def test_keys_live_in_postgres_and_each_change_is_an_event(pg_url: str) -> None:
    con = migrated(pg_url)
    key, record = create_key(con, "acme", 30.0, "ci", "replica-a")
    assert active_key_hashes(con) == {hash_key(key): (record.id, "acme", 30.0)}
    assert [k.id for k in list_keys(con)] == [record.id]
    assert revoke_key(con, record.id, "replica-b") and not revoke_key(con, record.id, "replica-b")
    assert active_key_hashes(con) == {}
    assert list_keys(con, include_revoked=True)[0].revoked_at is not None
    kinds = con.execute("SELECT origin, kind FROM fleet_events ORDER BY id").fetchall()
    assert kinds == [("replica-a", "keys"), ("replica-b", "keys")]  # not the refused revoke


def test_compass_keys_with_a_database_url_writes_postgres(pg_url: str, tmp_path: Path) -> None:
    from compass.cli.main import main

    env = {"COMPASS_HOME": str(tmp_path), "COMPASS_DATABASE_URL": pg_url}
    created = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.split()[-1]
    with psycopg.connect(pg_url) as con:
        (key_id,) = active_key_hashes(con)[hash_key(key)][:1]
    listed = CliRunner().invoke(main, ["keys", "list", "--json"], env=env)
    assert key_id in listed.output
    revoked = CliRunner().invoke(main, ["keys", "revoke", key_id], env=env)
    assert revoked.exit_code == 0, revoked.output
    again = CliRunner().invoke(main, ["keys", "revoke", key_id], env=env)
    assert again.exit_code != 0 and "no active key" in again.output
    with psycopg.connect(pg_url) as con:
        assert active_key_hashes(con) == {}
        assert con.execute("SELECT count(*) FROM fleet_events WHERE origin = 'cli'").fetchone()[0] == 2
    assert not (tmp_path / "compass.duckdb").exists()  # the local file is not where keys live


def test_serve_sees_keys_on_the_fleet_store_before_binding(pg_url: str, tmp_path: Path) -> None:
    """``compass serve`` decides whether it may bind beyond loopback from the keys: PostgreSQL's here."""
    from compass.config import load_settings
    from compass.storage.keys import any_keys_configured

    settings = load_settings(None, environ={"COMPASS_HOME": str(tmp_path), "COMPASS_DATABASE_URL": pg_url})
    con = migrated(pg_url)
    assert not any_keys_configured(settings)
    create_key(con, "acme")
    assert any_keys_configured(settings)
