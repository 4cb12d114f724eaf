"""The cache's DuckDB statements. Each function runs on the database thread via ``Database.run``.

Entries live in ``cache_entries`` (embedding included, so the FAISS index can always be rebuilt
from the table); counters in ``cache_stats`` as ``(tenant, name, value)`` rows that are only
ever incremented, so concurrent writers never lose an update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import numpy as np

ENTRY_COLUMNS = (
    "vector_id, id, tenant, scope, exact_hash, query, model, capability, request_id, "
    "created_at, last_hit_at, hits, prompt_tokens, completion_tokens, cost_usd"
)
META_TENANT = ""  # cache_stats rows of the cache's own bookkeeping
Increments = dict[tuple[str, str], float]  # (tenant, counter) -> amount


def load_entries(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every entry's lookup metadata (no embeddings, no response bodies), least recently used first."""
    sql = f"SELECT {ENTRY_COLUMNS} FROM cache_entries ORDER BY last_hit_at, vector_id"
    return con.execute(sql).fetchall()


def load_vectors(con: duckdb.DuckDBPyConnection, vector_ids: list[int] | None, dim: int) -> tuple[Any, Any]:
    """``(vector_ids, vectors)`` of the given entries (all when None), via Arrow, no Python lists."""
    import numpy as np
    import pyarrow.compute as pc

    sql = "SELECT vector_id, embedding FROM cache_entries"
    params: list[Any] = []
    if vector_ids is not None:
        sql += " WHERE vector_id IN (SELECT unnest(?::BIGINT[]))"
        params.append(vector_ids)
    table = con.sql(sql + " ORDER BY vector_id", params=params or None).to_arrow_table()
    ids = table.column("vector_id").to_numpy().astype(np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, dim), np.float32)
    column = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(column).to_numpy()
    if (lengths != dim).any():
        raise ValueError(f"stored embeddings do not all have dimension {dim}")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, flat.reshape(len(ids), dim)


def fetch_entries(con: duckdb.DuckDBPyConnection, entry_ids: list[str], dim: int) -> list[tuple[tuple, Any]]:
    """``(metadata row, vector)`` of the entries among ``entry_ids`` that exist, by vector id."""
    import numpy as np

    rows = con.execute(
        f"SELECT {ENTRY_COLUMNS}, embedding FROM cache_entries WHERE id IN (SELECT unnest(?::VARCHAR[]))"
        " ORDER BY vector_id",
        [list(entry_ids)],
    ).fetchall()
    return [(tuple(r[:-1]), np.asarray(r[-1], dtype=np.float32).reshape(dim)) for r in rows]


def write_entry(
    con: duckdb.DuckDBPyConnection,
    row: dict[str, Any],
    vector: np.ndarray,
    response: str,
    victims: list[str],
    increments: Increments,
) -> None:
    """One transaction: delete the entries the new one displaces, insert it, add to the counters."""
    con.execute("BEGIN TRANSACTION")
    try:
        if victims:
            con.execute("DELETE FROM cache_entries WHERE id IN (SELECT unnest(?::VARCHAR[]))", [victims])
        con.execute(
            "INSERT INTO cache_entries (id, vector_id, tenant, scope, exact_hash, query, embedding, response,"
            " model, capability, request_id, created_at, last_hit_at, hits, prompt_tokens, completion_tokens,"
            " cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            [
                row["id"],
                row["vector_id"],
                row["tenant"],
                row["scope"],
                row["exact"],
                row["query"],
                vector.tolist(),
                response,
                row["model"],
                row["capability"],
                row["request_id"],
                row["created_at"],
                row["created_at"],
                row["prompt_tokens"],
                row["completion_tokens"],
                row["cost_usd"],
            ],
        )
        add_counters(con, increments, next_vector_id=row["vector_id"] + 1)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def delete_entries(con: duckdb.DuckDBPyConnection, entry_ids: list[str], increments: Increments) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        if entry_ids:
            con.execute("DELETE FROM cache_entries WHERE id IN (SELECT unnest(?::VARCHAR[]))", [entry_ids])
        add_counters(con, increments)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def hit_entry(
    con: duckdb.DuckDBPyConnection, entry_id: str, now: float, pending: Increments, hit: Increments
) -> tuple[str, float | None] | None:
    """Record a hit; ``(stored response, cost of producing it)``, or None if the entry is gone.

    ``pending`` counters are written either way, ``hit`` ones (plus ``usd_saved``) only on a hit.
    An entry stored without its cost takes it from the producing request's history row (written
    by then) and keeps it, so "dollars saved" needs nothing from the caller.
    """
    row = con.execute(
        "UPDATE cache_entries SET hits = hits + 1, last_hit_at = ? WHERE id = ?"
        " RETURNING response, cost_usd, request_id, tenant",
        [now, entry_id],
    ).fetchone()
    if row is None:
        add_counters(con, pending)
        return None
    response, cost, request_id, tenant = row
    if cost is None:
        cost = request_cost(con, request_id)
        if cost is not None:
            con.execute("UPDATE cache_entries SET cost_usd = ? WHERE id = ?", [cost, entry_id])
    add_counters(con, hit_increments(pending, hit, tenant, cost))
    return str(response), cost


def hit_increments(pending: Increments, hit: Increments, tenant: str, cost: float | None) -> Increments:
    """The counters one hit adds: the pending ones, the hit's, and the dollars it saved."""
    increments = dict(pending)
    for key, value in [*hit.items(), ((tenant, "usd_saved"), cost or 0.0)]:
        increments[key] = increments.get(key, 0.0) + value
    return increments


def request_cost(con: duckdb.DuckDBPyConnection, request_id: str) -> float | None:
    """The cost the gateway recorded for ``request_id`` (None without a history table or row)."""
    import duckdb

    try:
        found = con.execute("SELECT cost_usd FROM requests WHERE id = ?", [request_id]).fetchone()
    except duckdb.CatalogException:
        return None
    return None if found is None or found[0] is None else float(found[0])


def served_entry(con: duckdb.DuckDBPyConnection, request_id: str) -> str | None:
    """The cache entry a request was answered from, per its history row."""
    import duckdb

    try:
        found = con.execute("SELECT cache_entry_id FROM requests WHERE id = ?", [request_id]).fetchone()
    except duckdb.CatalogException:
        return None
    return None if found is None else found[0]


HIGH_WATER = "next_vector_id"  # the one counter that is a high-water mark, not a sum

_UPSERT = (
    "INSERT INTO cache_stats SELECT * FROM (VALUES {rows}) AS v(tenant, name, value)"
    " ON CONFLICT (tenant, name) DO UPDATE SET value = CASE"
    f" WHEN excluded.tenant = '{META_TENANT}' AND excluded.name = '{HIGH_WATER}'"
    " THEN greatest(cache_stats.value, excluded.value)"
    " ELSE cache_stats.value + excluded.value END"
)


def add_counters(
    con: duckdb.DuckDBPyConnection, increments: Increments, next_vector_id: int | None = None
) -> None:
    """Add ``increments`` (and raise the next-vector-id mark) in one statement.

    One multi-row upsert costs about what a single-row one does (~2 ms); ``executemany`` paid that
    per counter, and a store touches five or more, which made cache writes the gateway's busiest
    DuckDB work under load.
    """
    rows = [(tenant, name, float(value)) for (tenant, name), value in increments.items() if value]
    if next_vector_id is not None:
        rows.append((META_TENANT, HIGH_WATER, float(next_vector_id)))
    if rows:
        placeholders = ", ".join(["(?::VARCHAR, ?::VARCHAR, ?::DOUBLE)"] * len(rows))
        con.execute(_UPSERT.format(rows=placeholders), [x for row in rows for x in row])


def load_counters(con: duckdb.DuckDBPyConnection) -> Increments:
    rows = con.execute("SELECT tenant, name, value FROM cache_stats").fetchall()
    return {(tenant, name): float(value) for tenant, name, value in rows}
