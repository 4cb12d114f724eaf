"""Numbered schema migrations with a table of applied ones (after simonw/llm's ``migrations.py``).

Add a migration by appending a function decorated with ``@migration``; never edit one that has
shipped. Each runs once, in order, inside a transaction, and is recorded in ``_migrations``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import duckdb

MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = []


def migration(fn: Callable[[duckdb.DuckDBPyConnection], None]) -> Callable[[duckdb.DuckDBPyConnection], None]:
    MIGRATIONS.append(fn)
    return fn


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for index, fn in enumerate(MIGRATIONS, start=1):
        name = f"m{index:03d}_{fn.__name__}"
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?)", [name, dt.datetime.now(dt.UTC)])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


@migration
def requests_table(con: duckdb.DuckDBPyConnection) -> None:
    """One row per chat request: what was asked, how it was routed, what it cost."""
    con.execute(
        """
        CREATE TABLE requests (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            tenant VARCHAR NOT NULL,
            key_id VARCHAR,
            stream BOOLEAN NOT NULL,
            requested_model VARCHAR,
            model VARCHAR,
            litellm_model VARCHAR,
            routing_method VARCHAR,
            tier VARCHAR,
            context VARCHAR,
            task_type VARCHAR,
            classifier VARCHAR,
            scores JSON,
            routing JSON,
            propensity DOUBLE,
            messages JSON,
            messages_hash VARCHAR,
            params JSON,
            response_content VARCHAR,
            finish_reason VARCHAR,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            cost_usd DOUBLE,
            cache_status VARCHAR,
            cache_entry_id VARCHAR,
            cache_similarity DOUBLE,
            attempts JSON,
            classify_ms DOUBLE,
            select_ms DOUBLE,
            cache_ms DOUBLE,
            routing_ms DOUBLE,
            upstream_ms DOUBLE,
            total_ms DOUBLE,
            status INTEGER NOT NULL,
            error VARCHAR,
            demo BOOLEAN NOT NULL DEFAULT FALSE
        )
        """
    )


@migration
def rewards_table(con: duckdb.DuckDBPyConnection) -> None:
    """Layer 2's event log: the bandit posteriors are a fold over these rows."""
    con.execute(
        """
        CREATE TABLE rewards (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            ts DOUBLE NOT NULL,
            request_id VARCHAR NOT NULL,
            tenant VARCHAR,
            context VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            reward DOUBLE NOT NULL,
            source VARCHAR NOT NULL,
            comment VARCHAR,
            superseded BOOLEAN NOT NULL DEFAULT FALSE
        )
        """
    )
    con.execute("CREATE INDEX rewards_request ON rewards (request_id)")


@migration
def cache_entries_table(con: duckdb.DuckDBPyConnection) -> None:
    """Layer 3's entries and counters; vectors are kept here too, so the FAISS index can always be rebuilt.

    The cache keeps its lookup metadata in memory and reads ``response`` by primary key on a hit,
    so no secondary index is needed (and none slows the frequent ``last_hit_at`` updates).
    """
    con.execute(
        """
        CREATE TABLE cache_entries (
            id VARCHAR PRIMARY KEY,
            vector_id BIGINT NOT NULL,
            tenant VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            exact_hash VARCHAR NOT NULL,
            query VARCHAR NOT NULL,
            embedding FLOAT[] NOT NULL,
            response JSON NOT NULL,
            model VARCHAR NOT NULL,
            capability DOUBLE NOT NULL,
            request_id VARCHAR NOT NULL,
            created_at DOUBLE NOT NULL,
            last_hit_at DOUBLE NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE
        )
        """
    )
    # Counters per tenant (hits by tier, tokens and dollars saved, evictions); tenant '' holds
    # the cache's own bookkeeping (the next vector id, never reused across restarts).
    con.execute(
        "CREATE TABLE cache_stats (tenant VARCHAR NOT NULL, name VARCHAR NOT NULL, value DOUBLE NOT NULL,"
        " PRIMARY KEY (tenant, name))"
    )


@migration
def api_keys_table(con: duckdb.DuckDBPyConnection) -> None:
    """Client API keys, stored as SHA-256 hashes; each belongs to one tenant."""
    con.execute(
        """
        CREATE TABLE api_keys (
            id VARCHAR PRIMARY KEY,
            tenant VARCHAR NOT NULL,
            key_hash VARCHAR NOT NULL UNIQUE,
            prefix VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP,
            requests_per_minute DOUBLE,
            note VARCHAR
        )
        """
    )


@migration
def responses_table(con: duckdb.DuckDBPyConnection) -> None:
    """Stored Responses API objects: ``GET /v1/responses/{id}`` and ``previous_response_id``.

    ``conversation`` holds the chat messages up to and including this response's output (without
    ``instructions``, which OpenAI does not carry over), so a follow-up turn reads one row.
    """
    con.execute(
        """
        CREATE TABLE responses (
            id VARCHAR PRIMARY KEY,
            request_id VARCHAR NOT NULL,
            tenant VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            previous_response_id VARCHAR,
            conversation JSON NOT NULL,
            response JSON NOT NULL
        )
        """
    )


@migration
def embedding_columns(con: duckdb.DuckDBPyConnection) -> None:
    """The prompt's MiniLM vector (384 float32, 1,536 bytes) on requests and rewards.

    Layer 2's per-prompt selector (``neighbourhood``) files each reward under the request's vector;
    the reward row carries its own copy, so retention pruning requests never changes the fold.
    NULL where no embedding was computed (the selector then learns only the tier context).
    """
    con.execute("ALTER TABLE requests ADD COLUMN embedding BLOB")
    con.execute("ALTER TABLE rewards ADD COLUMN embedding BLOB")
