"""API keys: creation, hashing, lookup. Keys are shown once and stored only as SHA-256 hashes.

A key is ``cmp-`` + 32 random bytes (url-safe base64), so a hash lookup is all the check needs:
no per-key salt is required for secrets of that entropy, and lookup stays O(1).

The same functions run on the embedded DuckDB file and on the fleet store (``storage.url``): the
table is the same, only the placeholder differs. On PostgreSQL a create or revoke also appends a
``keys`` event in its transaction (``fleet_log.emit``), and every replica reloads its key table
when it follows it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import msgspec

from compass.config import Settings
from compass.storage.history import utcnow

KEY_PREFIX = "cmp-"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    prefix: str
    created_at: str
    revoked_at: str | None = None
    requests_per_minute: float | None = None
    note: str | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def on_postgres(con: Any) -> bool:
    return type(con).__module__.startswith("psycopg")


def _sql(con: Any, text: str) -> str:
    return text.replace("?", "%s") if on_postgres(con) else text


def _changed(con: Any, origin: str, fn: Any, *args: Any) -> Any:
    """Run ``fn`` and, on PostgreSQL, the ``keys`` event in one transaction."""
    if not on_postgres(con):
        return fn(*args)
    from compass.storage.fleet_log import emit

    with con.transaction():
        result = fn(*args)
        if result:
            emit(con, origin, "keys", {})
    return result


def create_key(
    con: Any,
    tenant: str,
    requests_per_minute: float | None = None,
    note: str | None = None,
    origin: str = "",
) -> tuple[str, ApiKey]:
    """Insert a new key for ``tenant``; returns ``(the secret key, its record)``."""
    if not tenant or len(tenant) > 100:
        raise ValueError("tenant must be 1 to 100 characters")
    key = new_key()
    key_id = "key_" + secrets.token_hex(6)
    created = utcnow()

    def insert() -> bool:
        con.execute(
            _sql(
                con,
                "INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at, requests_per_minute, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ),
            [key_id, tenant, hash_key(key), key[:10], created, requests_per_minute, note],
        )
        return True

    _changed(con, origin, insert)
    record = ApiKey(
        id=key_id,
        tenant=tenant,
        prefix=key[:10],
        created_at=created.isoformat() + "Z",
        requests_per_minute=requests_per_minute,
        note=note,
    )
    return key, record


def list_keys(con: Any, include_revoked: bool = False) -> list[ApiKey]:
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    rows = con.execute(
        f"SELECT id, tenant, prefix, created_at, revoked_at, requests_per_minute, note FROM api_keys {where}"
        " ORDER BY created_at"
    ).fetchall()
    return [
        ApiKey(
            id=r[0],
            tenant=r[1],
            prefix=r[2],
            created_at=r[3].isoformat() + "Z",
            revoked_at=r[4].isoformat() + "Z" if r[4] else None,
            requests_per_minute=r[5],
            note=r[6],
        )
        for r in rows
    ]


def revoke_key(con: Any, key_id: str, origin: str = "") -> bool:
    def revoke() -> bool:
        found = con.execute(
            _sql(con, "SELECT count(*) FROM api_keys WHERE id = ? AND revoked_at IS NULL"), [key_id]
        ).fetchone()[0]
        if found:
            con.execute(_sql(con, "UPDATE api_keys SET revoked_at = ? WHERE id = ?"), [utcnow(), key_id])
        return bool(found)

    return bool(_changed(con, origin, revoke))


def active_key_hashes(con: Any) -> dict[str, tuple[str, str, float | None]]:
    """``key hash → (key id, tenant, requests per minute)`` for every active key."""
    rows = con.execute(
        "SELECT key_hash, id, tenant, requests_per_minute FROM api_keys WHERE revoked_at IS NULL"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def admin_key(settings: Settings) -> str | None:
    return os.environ.get("COMPASS_ADMIN_KEY") or settings.security.admin_key or None


def any_keys_configured(settings: Settings) -> bool:
    """Admin key set, or an active client key in the store (the file is read without locking it)."""
    if admin_key(settings):
        return True
    if settings.storage.url is not None:
        return _any_keys_on_postgres(settings)
    path: Path = settings.database_path
    if not path.exists():
        return False
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return True  # locked by a running server: assume keys rather than open up
    try:
        return bool(con.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])
    except duckdb.Error:
        return False  # an older file without the table
    finally:
        con.close()


def _any_keys_on_postgres(settings: Settings) -> bool:
    from compass.errors import ConfigError
    from compass.storage.postgres import connect

    assert settings.storage.url is not None
    try:
        con = connect(settings.storage.url, settings.storage.connect_timeout_s)
    except ConfigError:
        return True  # unreachable: start-up reports it; assume keys rather than open up
    try:
        return bool(con.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])
    except Exception:
        return False  # no table yet: the first replica's migrations create it
    finally:
        con.close()
