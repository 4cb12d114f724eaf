"""One contract for ``CacheStore``, run over both: the embedded DuckDB file and a real PostgreSQL 15.

The semantic cache only talks to its store through this interface, so what passes here for both
is what makes the cache behave the same on either (its own behaviour is tests/test_cache.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from compass.storage.db import Database
from compass.storage.fleet_log import Position, read_new
from compass.storage.postgres import PostgresStore
from layers.cache.stores import CACHE_STORE_CLS, CacheStore, build_cache_store

DIM = 8
Notified = list[tuple[str, Any]]


@pytest.fixture(params=sorted(CACHE_STORE_CLS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[CacheStore, Any]]:
    """``(store, runner)`` for each registered store."""
    if request.param == "duckdb":
        db = Database(tmp_path / "compass.duckdb")
        db.open()
        yield build_cache_store("duckdb", db), db
        db.close()
        return
    url = request.getfixturevalue("pg_url")
    pg = PostgresStore(url)
    pg.open()
    notified: Notified = []

    def notify(con: Any, kind: str, payload: Any) -> None:
        from compass.storage.fleet_log import emit

        notified.append((kind, payload))
        emit(con, "test", kind, payload)

    yield build_cache_store("postgresql", pg, notify=notify), pg
    pg.close()


def row(vector_id: int, entry_id: str, tenant: str = "t1", request_id: str = "req-1") -> dict[str, Any]:
    return {
        "vector_id": vector_id,
        "id": entry_id,
        "tenant": tenant,
        "scope": f"scope-{tenant}",
        "exact": f"exact-{entry_id}",
        "query": f"question {entry_id}",
        "model": "medium",
        "capability": 0.5,
        "request_id": request_id,
        "created_at": 100.0 + vector_id,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost_usd": None,
    }


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


BODY = msgspec.json.encode({"choices": [{"message": {"content": "hi"}}]}).decode()


async def test_entries_round_trip_with_their_vectors(backend: tuple[CacheStore, Any]) -> None:
    store, _ = backend
    first = await store.next_vector_id(1)
    second = await store.next_vector_id(first + 1)
    assert second > first  # never reused
    await store.write_entry(row(first, "ce-a"), vec(1), BODY, [], {("t1", "stores"): 1})
    await store.write_entry(row(second, "ce-b", tenant="t2"), vec(2), BODY, [], {("t2", "stores"): 1})
    rows = await store.load_entries()
    assert [(r[0], r[1], r[2]) for r in rows] == [(first, "ce-a", "t1"), (second, "ce-b", "t2")]
    ids, vectors = await store.load_vectors(None, DIM)
    assert ids.tolist() == [first, second]
    np.testing.assert_allclose(vectors, np.stack([vec(1), vec(2)]), atol=1e-6)
    only, one = await store.load_vectors([second], DIM)
    assert only.tolist() == [second] and np.allclose(one[0], vec(2), atol=1e-6)
    fetched = await store.fetch_entries(["ce-b", "ce-gone"], DIM)
    assert [(r[1], r[2]) for r, _ in fetched] == [("ce-b", "t2")]
    assert np.allclose(fetched[0][1], vec(2), atol=1e-6) and fetched[0][0] == tuple(rows[1])
    assert (await store.load_counters())[("t1", "stores")] == 1.0


async def test_a_write_replaces_its_victims_in_one_step(backend: tuple[CacheStore, Any]) -> None:
    store, _ = backend
    await store.write_entry(row(1, "ce-old"), vec(1), BODY, [], {})
    await store.write_entry(row(2, "ce-new"), vec(2), BODY, ["ce-old"], {("t1", "evicted_replaced"): 1})
    assert [r[1] for r in await store.load_entries()] == ["ce-new"]
    await store.delete_entries(["ce-new"], {("t1", "evicted_feedback"): 1})
    assert await store.load_entries() == []
    counters = await store.load_counters()
    assert counters[("t1", "evicted_replaced")] == 1.0 and counters[("t1", "evicted_feedback")] == 1.0


async def test_a_hit_returns_the_answer_and_counts_once(backend: tuple[CacheStore, Any]) -> None:
    store, _ = backend
    await store.write_entry(row(1, "ce-a"), vec(1), BODY, [], {})
    found = await store.hit_entry("ce-a", 500.0, {("t1", "lookups"): 2}, {("t1", "hits_exact"): 1})
    assert found is not None and msgspec.json.decode(found[0]) == msgspec.json.decode(BODY)
    assert found[1] is None  # no cost known, no history row
    gone = await store.hit_entry("ce-missing", 501.0, {("t1", "lookups"): 1}, {("t1", "hits_exact"): 1})
    assert gone is None
    counters = await store.load_counters()
    assert counters[("t1", "lookups")] == 3.0 and counters[("t1", "hits_exact")] == 1.0
    (entry,) = await store.load_entries()
    assert entry[10] == 500.0 and entry[11] == 1  # last_hit_at, hits


async def test_served_entry_reads_the_history_row(backend: tuple[CacheStore, Any]) -> None:
    store, runner = backend
    assert await store.served_entry("req-none") is None

    def insert(con: Any) -> None:
        mark = "%s" if isinstance(runner, PostgresStore) else "?"
        con.execute(
            "INSERT INTO requests (id, created_at, tenant, stream, status, cache_entry_id, cost_usd)"
            f" VALUES ({mark}, now(), 't1', false, 200, {mark}, {mark})",
            ["req-9", "ce-a", 0.25],
        )

    await runner.run(insert)
    assert await store.served_entry("req-9") == "ce-a"
    await store.write_entry(row(1, "ce-a", request_id="req-9"), vec(1), BODY, [], {})
    found = await store.hit_entry("ce-a", 600.0, {}, {("t1", "hits_exact"): 1})
    assert found is not None and found[1] == 0.25  # the cost comes from the producing request
    assert (await store.load_counters())[("t1", "usd_saved")] == 0.25


async def test_only_a_shared_store_announces_its_changes(backend: tuple[CacheStore, Any]) -> None:
    store, runner = backend
    await store.write_entry(row(1, "ce-a"), vec(1), BODY, [], {})
    await store.write_entry(row(2, "ce-b"), vec(2), BODY, ["ce-a"], {})
    await store.delete_entries(["ce-b"], {})
    if not store.shared:
        assert store.name == "duckdb"
        return
    events = await runner.run(read_new, Position())
    assert [(e.kind, e.payload) for e in events] == [
        ("cache_put", {"id": "ce-a", "victims": []}),
        ("cache_put", {"id": "ce-b", "victims": ["ce-a"]}),
        ("cache_del", {"ids": ["ce-b"]}),
    ]
