"""The Responses API through Litestar's test client: the cache, hash-only storage, retention."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.storage.db import Database
from compass.storage.retention import purge_expired
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings


def test_a_repeated_response_is_answered_by_the_cache(tmp_path: Path) -> None:
    mock = MockUpstream()
    settings = make_settings(tmp_path, MOCK_POOL, **{"cache.enabled": True})
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as client:
        body = {"model": "small", "input": "What is the capital of France?", "instructions": "Be short."}
        first = client.post("/v1/responses", json=body).json()
        second = client.post("/v1/responses", json=body).json()  # waits for the first one's store
        assert first["routing"]["cache"]["status"] == "miss"
        assert second["routing"]["cache"]["status"] == "exact"
        assert second["output"][0]["content"][0]["text"] == first["output"][0]["content"][0]["text"]
        assert second["id"] != first["id"] and len(mock.history) == 1


def test_hash_only_storage_keeps_no_responses(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MOCK_POOL, **{"storage.store_content": "hash"})
    with TestClient(create_app(settings, build_services(settings, upstream=MockUpstream()))) as client:
        response = client.post("/v1/responses", json={"input": "hello"})
        assert response.status_code == 200
        resp_id = response.json()["id"]
        assert client.get(f"/v1/responses/{resp_id}").status_code == 404
        follow = client.post("/v1/responses", json={"input": "again", "previous_response_id": resp_id})
        assert follow.status_code == 404 and follow.json()["error"]["param"] == "previous_response_id"


def test_retention_deletes_old_stored_responses(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.duckdb")
    db.open()
    now = dt.datetime(2026, 1, 31, 12, 0)
    try:
        db.run_sync(
            lambda con: con.execute(
                "INSERT INTO responses VALUES ('resp_old', 'chatcmpl-old', 'local', ?, NULL, '[]', '{}'),"
                " ('resp_new', 'chatcmpl-new', 'local', ?, NULL, '[]', '{}')",
                [now - dt.timedelta(days=40), now - dt.timedelta(hours=1)],
            )
        )
        changed = db.run_sync(purge_expired, now - dt.timedelta(days=30), "full")
        left = db.run_sync(lambda con: con.execute("SELECT id FROM responses").fetchall())
    finally:
        db.close()
    assert changed["responses"] == 1 and left == [("resp_new",)]


def test_stored_responses_belong_to_their_tenant(tmp_path: Path) -> None:
    from compass.storage.keys import create_key

    settings = make_settings(tmp_path, MOCK_POOL, **{"security.admin_key": "admin-key-for-tests-0123456789"})
    db = Database(settings.database_path)
    db.open()
    key_a, _ = db.run_sync(create_key, "acme")
    key_b, _ = db.run_sync(create_key, "globex")
    db.close()
    with TestClient(create_app(settings, build_services(settings, upstream=MockUpstream()))) as client:
        acme = {"Authorization": f"Bearer {key_a}"}
        globex = {"Authorization": f"Bearer {key_b}"}
        resp_id = client.post("/v1/responses", json={"input": "secret plan"}, headers=acme).json()["id"]
        assert client.get(f"/v1/responses/{resp_id}", headers=acme).status_code == 200
        assert client.get(f"/v1/responses/{resp_id}", headers=globex).status_code == 404
        follow = {"input": "go on", "previous_response_id": resp_id}
        assert client.post("/v1/responses", json=follow, headers=globex).status_code == 404
        assert client.post("/v1/responses", json=follow, headers=acme).status_code == 200
