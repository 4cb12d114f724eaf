"""Keys, tenants, the admin key, rate and request limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.storage.db import Database
from compass.storage.keys import KEY_PREFIX, any_keys_configured, create_key
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings

CHAT = "/v1/chat/completions"
ADMIN = "admin-secret-for-tests"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    """A gateway with an admin key and two tenants' client keys, created before start."""
    settings = make_settings(
        tmp_path,
        MOCK_POOL,
        **{"security.admin_key": ADMIN, "limits.max_messages": 4, "limits.max_tokens_ceiling": 100},
    )
    db = Database(settings.database_path)
    db.open()
    key_a, _ = db.run_sync(create_key, "acme")
    key_b, _ = db.run_sync(create_key, "globex", 2.0)  # two requests per minute
    db.close()
    with TestClient(create_app(settings, build_services(settings, upstream=MockUpstream()))) as client:
        yield client, key_a, key_b


def chat(client: TestClient, key: str | None, text: str = "hi", **extra: object):
    headers = bearer(key) if key else {}
    return client.post(CHAT, json={"messages": [{"role": "user", "content": text}], **extra}, headers=headers)


def test_keys_are_random_and_stored_hashed(tmp_path: Path) -> None:
    db = Database(tmp_path / "k.duckdb")
    db.open()
    key, record = db.run_sync(create_key, "acme")
    stored = db.run_sync(lambda con: con.execute("SELECT key_hash, prefix FROM api_keys").fetchall())
    db.close()
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert key not in str(stored) and stored[0][1] == key[:10] and record.tenant == "acme"


def test_missing_and_wrong_keys_are_401(secured: tuple[TestClient, str, str]) -> None:
    client, _, _ = secured
    for headers in ({}, bearer("cmp-wrong"), {"Authorization": "Basic abc"}):
        response = client.post(CHAT, json={"messages": [{"role": "user", "content": "x"}]}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/health").status_code == 200  # liveness stays open


def test_admin_endpoints_need_the_admin_key(secured: tuple[TestClient, str, str]) -> None:
    client, key_a, _ = secured
    for path in ("/admin/api/bandit", "/admin/api/requests", "/admin", "/admin/api/keys"):
        assert client.get(path).status_code == 401
        response = client.get(path, headers=bearer(key_a))
        assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
        assert client.get(path, headers=bearer(ADMIN)).status_code == 200
    sql = {"sql": "SELECT 1"}
    assert client.post("/admin/api/sql", json=sql, headers=bearer(key_a)).status_code == 403
    assert client.post("/admin/api/sql", json=sql, headers=bearer(ADMIN)).status_code == 200


def test_tenants_never_see_each_other(secured: tuple[TestClient, str, str]) -> None:
    client, key_a, key_b = secured
    id_a = chat(client, key_a, "acme question").json()["id"]
    id_b = chat(client, key_b, "globex question").json()["id"]
    stats_a = client.get("/stats", headers=bearer(key_a)).json()
    raw_a = client.get("/stats/raw", headers=bearer(key_a)).json()
    assert stats_a["total_calls"] == 1 and [r["id"] for r in raw_a["data"]] == [id_a]
    # Feedback on another tenant's answer is "not found", not "forbidden": ids do not leak.
    assert client.post("/feedback", json={"id": id_b, "score": 1}, headers=bearer(key_a)).status_code == 404
    assert client.post("/feedback", json={"id": id_a, "score": 1}, headers=bearer(key_a)).status_code == 200
    admin_stats = client.get("/stats", headers=bearer(ADMIN)).json()
    assert admin_stats["total_calls"] == 2


def test_rate_limit_is_429_with_retry_after(secured: tuple[TestClient, str, str]) -> None:
    client, key_a, key_b = secured
    assert chat(client, key_b).status_code == 200
    assert chat(client, key_b).status_code == 200
    limited = chat(client, key_b)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert chat(client, key_a).status_code == 200  # other keys are unaffected


def test_request_limits(secured: tuple[TestClient, str, str]) -> None:
    client, key_a, _ = secured
    many = [{"role": "user", "content": str(i)} for i in range(5)]
    response = client.post(CHAT, json={"messages": many}, headers=bearer(key_a))
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    response = chat(client, key_a, max_tokens=101)
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
    huge = "x" * (5 * 1024 * 1024)
    response = chat(client, key_a, huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_key_management_endpoints(secured: tuple[TestClient, str, str]) -> None:
    client, _, _ = secured
    created = client.post("/admin/api/keys", json={"tenant": "initech"}, headers=bearer(ADMIN))
    assert created.status_code == 201
    new_key, new_id = created.json()["key"], created.json()["id"]
    assert chat(client, new_key).status_code == 200  # usable at once, no restart
    listed = client.get("/admin/api/keys", headers=bearer(ADMIN)).json()["data"]
    assert {k["tenant"] for k in listed} == {"acme", "globex", "initech"}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert client.delete(f"/admin/api/keys/{new_id}", headers=bearer(ADMIN)).status_code == 200
    assert chat(client, new_key).status_code == 401
    assert client.delete(f"/admin/api/keys/{new_id}", headers=bearer(ADMIN)).status_code == 404
    bad = client.post("/admin/api/keys", json={"tenant": "no spaces allowed"}, headers=bearer(ADMIN))
    assert bad.status_code == 400


def test_local_mode_is_open_and_detected(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MOCK_POOL)
    assert not any_keys_configured(settings)
    with TestClient(create_app(settings, build_services(settings, upstream=MockUpstream()))) as client:
        assert chat(client, None).status_code == 200
        assert client.get("/admin/api/bandit").status_code == 200
        client.post("/admin/api/keys", json={"tenant": "acme"})
        assert chat(client, None).status_code == 401  # the first key ends local mode
    assert any_keys_configured(settings)
