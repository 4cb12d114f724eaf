"""PostgreSQL schema migrations for the fleet store, numbered like ``migrations.py`` (DuckDB).

Replicas that start together must not race: ``migrate`` holds a session advisory lock while it
reads ``_migrations`` and applies what is missing, so exactly one replica applies each migration
and the others, once they get the lock, find it recorded. Each migration runs in its own
transaction (PostgreSQL DDL is transactional). Never edit one that has shipped; append.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Any fixed 64-bit number; every replica must use the same one (hex of "compass\0").
MIGRATION_LOCK = 0x636F6D7061737300

PG_MIGRATIONS: list[Callable[[Any], None]] = []


def pg_migration(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    PG_MIGRATIONS.append(fn)
    return fn


def migration_names() -> list[str]:
    return [f"m{i:03d}_{fn.__name__}" for i, fn in enumerate(PG_MIGRATIONS, start=1)]


def migrate(con: Any) -> list[str]:
    """Apply every migration not yet recorded, under the advisory lock; return the names applied now.

    ``con`` is a psycopg 3 connection in autocommit mode (the lock is per session, not per transaction).
    """
    con.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
        applied = []
        for name, fn in zip(migration_names(), PG_MIGRATIONS, strict=True):
            if name in done:
                continue
            with con.transaction():
                fn(con)
                con.execute("INSERT INTO _migrations VALUES (%s, now())", [name])
            applied.append(name)
        return applied
    finally:
        con.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])


@pg_migration
def requests_table(con: Any) -> None:
    """Same columns as DuckDB's ``requests`` (JSON as jsonb), so the README's SQL reads the same."""
    con.execute(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            tenant TEXT NOT NULL,
            key_id TEXT,
            stream BOOLEAN NOT NULL,
            requested_model TEXT,
            model TEXT,
            litellm_model TEXT,
            routing_method TEXT,
            tier TEXT,
            context TEXT,
            task_type TEXT,
            classifier TEXT,
            scores JSONB,
            routing JSONB,
            propensity DOUBLE PRECISION,
            messages JSONB,
            messages_hash TEXT,
            params JSONB,
            response_content TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            cost_usd DOUBLE PRECISION,
            cache_status TEXT,
            cache_entry_id TEXT,
            cache_similarity DOUBLE PRECISION,
            attempts JSONB,
            classify_ms DOUBLE PRECISION,
            select_ms DOUBLE PRECISION,
            cache_ms DOUBLE PRECISION,
            routing_ms DOUBLE PRECISION,
            upstream_ms DOUBLE PRECISION,
            total_ms DOUBLE PRECISION,
            status INTEGER NOT NULL,
            error TEXT,
            demo BOOLEAN NOT NULL DEFAULT FALSE
        )
        """
    )
    con.execute("CREATE INDEX requests_created_at ON requests (created_at)")


@pg_migration
def rewards_table(con: Any) -> None:
    """Layer 2's event log. ``seq`` orders it fleet-wide: a replica follows rewards past its watermark."""
    con.execute(
        """
        CREATE TABLE rewards (
            seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
            id TEXT PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            request_id TEXT NOT NULL,
            tenant TEXT,
            context TEXT NOT NULL,
            model TEXT NOT NULL,
            reward DOUBLE PRECISION NOT NULL,
            source TEXT NOT NULL,
            comment TEXT,
            superseded BOOLEAN NOT NULL DEFAULT FALSE
        )
        """
    )
    con.execute("CREATE INDEX rewards_request ON rewards (request_id)")


@pg_migration
def cache_entries_table(con: Any) -> None:
    """Layer 3's entries with their vectors (float4[]), so any replica can rebuild its FAISS index."""
    con.execute(
        """
        CREATE TABLE cache_entries (
            id TEXT PRIMARY KEY,
            vector_id BIGINT NOT NULL,
            tenant TEXT NOT NULL,
            scope TEXT NOT NULL,
            exact_hash TEXT NOT NULL,
            query TEXT NOT NULL,
            embedding REAL[] NOT NULL,
            response JSONB NOT NULL,
            model TEXT NOT NULL,
            capability DOUBLE PRECISION NOT NULL,
            request_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_hit_at DOUBLE PRECISION NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE PRECISION
        )
        """
    )
    con.execute(
        "CREATE TABLE cache_stats (tenant TEXT NOT NULL, name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (tenant, name))"
    )
    # Fleet-unique vector ids (DuckDB keeps a counter row in cache_stats; replicas need a sequence).
    con.execute("CREATE SEQUENCE cache_vector_ids")


@pg_migration
def api_keys_table(con: Any) -> None:
    """Client API keys as SHA-256 hashes, one tenant each; same columns as DuckDB's."""
    con.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP,
            requests_per_minute DOUBLE PRECISION,
            note TEXT
        )
        """
    )


@pg_migration
def fleet_events_table(con: Any) -> None:
    """The fleet's change log that replicas follow (compass/storage/fleet_log.py).

    ``xid`` is the writing transaction's id: a follower reads the rows at or above the oldest
    transaction still running when it last read, so a row whose transaction commits late is
    never passed over (a plain identity watermark would skip it).
    """
    con.execute(
        """
        CREATE TABLE fleet_events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            xid XID8 NOT NULL DEFAULT pg_current_xact_id(),
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            origin TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload JSONB NOT NULL
        )
        """
    )
    con.execute("CREATE INDEX fleet_events_xid ON fleet_events (xid)")
    con.execute("CREATE INDEX fleet_events_created_at ON fleet_events (created_at)")


@pg_migration
def embedding_columns(con: Any) -> None:
    """The prompt's MiniLM vector (float32 bytes) on requests and rewards; see DuckDB's migration."""
    con.execute("ALTER TABLE requests ADD COLUMN embedding BYTEA")
    con.execute("ALTER TABLE rewards ADD COLUMN embedding BYTEA")


@pg_migration
def rate_buckets(con: Any) -> None:
    """``limits.requests_per_minute`` as one token bucket per key for the whole fleet.

    ``compass_take_token`` is ``compass.storage.rate_limits.TokenBucket.take`` on a locked row: it
    returns 0 and takes a token, or the seconds until one is there. The refill reads the server's
    clock after the lock is held, so replicas' clocks never matter.
    """
    con.execute(
        "CREATE TABLE rate_buckets (bucket TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL,"
        " updated_at TIMESTAMPTZ NOT NULL)"
    )
    con.execute(
        """
        CREATE FUNCTION compass_take_token(
            p_bucket TEXT, p_capacity DOUBLE PRECISION, p_rate DOUBLE PRECISION
        )
        RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
        DECLARE
            level DOUBLE PRECISION;
            last TIMESTAMPTZ;
            now_ts TIMESTAMPTZ;
        BEGIN
            INSERT INTO rate_buckets VALUES (p_bucket, p_capacity, clock_timestamp())
                ON CONFLICT (bucket) DO NOTHING;
            SELECT tokens, updated_at INTO level, last FROM rate_buckets WHERE bucket = p_bucket FOR UPDATE;
            now_ts := greatest(clock_timestamp(), last);
            level := least(p_capacity, level + extract(epoch FROM now_ts - last) * p_rate);
            IF level >= 1 THEN
                UPDATE rate_buckets SET tokens = level - 1, updated_at = now_ts WHERE bucket = p_bucket;
                RETURN 0;
            END IF;
            UPDATE rate_buckets SET tokens = level, updated_at = now_ts WHERE bucket = p_bucket;
            RETURN (1 - level) / p_rate;
        END
        $$
        """
    )


@pg_migration
def ingested_at(con: Any) -> None:
    """When PostgreSQL took each row (its transaction's start, on its one clock), so the DuckDB
    mirror that ``compass sql`` and ``/stats`` read (``fleet_analysis``) fetches only newer rows."""
    for table in ("requests", "rewards"):
        con.execute(f"ALTER TABLE {table} ADD COLUMN ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()")
        con.execute(f"CREATE INDEX {table}_ingested_at ON {table} (ingested_at)")


@pg_migration
def responses_table(con: Any) -> None:
    """Stored Responses API objects, as DuckDB's ``responses`` (JSON as jsonb), for every replica."""
    con.execute(
        """
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            tenant TEXT NOT NULL,
            created_at TIMESTAMP NOT NULL,
            previous_response_id TEXT,
            conversation JSONB NOT NULL,
            response JSONB NOT NULL
        )
        """
    )
    con.execute("CREATE INDEX responses_created_at ON responses (created_at)")
