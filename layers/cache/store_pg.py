"""The cache's PostgreSQL statements (the fleet store) and ``PostgresCacheStore``.

Same tables and columns as DuckDB's (``cache_entries`` with ``embedding real[]``, ``cache_stats``);
vector ids come from the sequence ``cache_vector_ids`` because several replicas insert. Every
insert or delete also calls ``notify`` (``compass.storage.fleet_log.emit``) in its transaction,
so the other replicas add or drop the entry in their own FAISS index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from layers.cache.store import ENTRY_COLUMNS, HIGH_WATER, META_TENANT, Increments, hit_increments
from layers.cache.stores import CacheStore, Notify

if TYPE_CHECKING:
    import numpy as np


def load_entries_pg(con: Any) -> list[tuple]:
    sql = f"SELECT {ENTRY_COLUMNS} FROM cache_entries ORDER BY last_hit_at, vector_id"
    return con.execute(sql).fetchall()


def _vectors(rows: list[tuple], dim: int) -> np.ndarray:
    import numpy as np

    if not rows:
        return np.zeros((0, dim), np.float32)
    if any(len(r) != dim for r in rows):
        raise ValueError(f"stored embeddings do not all have dimension {dim}")
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)


def load_vectors_pg(con: Any, vector_ids: list[int] | None, dim: int) -> tuple[Any, Any]:
    import numpy as np

    sql, params = "SELECT vector_id, embedding FROM cache_entries", []
    if vector_ids is not None:
        sql += " WHERE vector_id = ANY(%s)"
        params.append(list(vector_ids))
    with con.cursor(binary=True) as cur:
        rows = cur.execute(sql + " ORDER BY vector_id", params).fetchall()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids, _vectors([r[1] for r in rows], dim)


def fetch_entries_pg(con: Any, entry_ids: list[str], dim: int) -> list[tuple[tuple, Any]]:
    with con.cursor(binary=True) as cur:
        rows = cur.execute(
            f"SELECT {ENTRY_COLUMNS}, embedding FROM cache_entries WHERE id = ANY(%s) ORDER BY vector_id",
            [list(entry_ids)],
        ).fetchall()
    vectors = _vectors([r[-1] for r in rows], dim)
    return [(tuple(r[:-1]), vectors[i]) for i, r in enumerate(rows)]


def add_counters_pg(con: Any, increments: Increments, next_vector_id: int | None = None) -> None:
    rows = [(tenant, name, float(value)) for (tenant, name), value in increments.items() if value]
    if next_vector_id is not None:
        rows.append((META_TENANT, HIGH_WATER, float(next_vector_id)))
    if not rows:
        return
    values = ", ".join(["(%s::text, %s::text, %s::float8)"] * len(rows))
    con.execute(
        f"INSERT INTO cache_stats (tenant, name, value) VALUES {values}"
        " ON CONFLICT (tenant, name) DO UPDATE SET value = CASE"
        f" WHEN excluded.tenant = '{META_TENANT}' AND excluded.name = '{HIGH_WATER}'"
        " THEN greatest(cache_stats.value, excluded.value)"
        " ELSE cache_stats.value + excluded.value END",
        [x for row in rows for x in row],
    )


def load_counters_pg(con: Any) -> Increments:
    rows = con.execute("SELECT tenant, name, value FROM cache_stats").fetchall()
    return {(tenant, name): float(value) for tenant, name, value in rows}


def write_entry_pg(
    con: Any,
    row: dict[str, Any],
    vector: Any,
    response: str,
    victims: list[str],
    increments: Increments,
    notify: Notify | None,
) -> None:
    with con.transaction():
        if victims:
            con.execute("DELETE FROM cache_entries WHERE id = ANY(%s)", [victims])
        con.execute(
            "INSERT INTO cache_entries (id, vector_id, tenant, scope, exact_hash, query, embedding, response,"
            " model, capability, request_id, created_at, last_hit_at, hits, prompt_tokens, completion_tokens,"
            " cost_usd) VALUES (%s, %s, %s, %s, %s, %s, %s::real[], %s::jsonb,"
            " %s, %s, %s, %s, %s, 0, %s, %s, %s)",
            [
                row["id"],
                row["vector_id"],
                row["tenant"],
                row["scope"],
                row["exact"],
                row["query"],
                [float(x) for x in vector],
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
        add_counters_pg(con, increments)
        if notify is not None:
            notify(con, "cache_put", {"id": row["id"], "victims": victims})


def delete_entries_pg(con: Any, entry_ids: list[str], increments: Increments, notify: Notify | None) -> None:
    with con.transaction():
        if entry_ids:
            con.execute("DELETE FROM cache_entries WHERE id = ANY(%s)", [entry_ids])
        add_counters_pg(con, increments)
        if notify is not None and entry_ids:
            notify(con, "cache_del", {"ids": entry_ids})


def hit_entry_pg(
    con: Any, entry_id: str, now: float, pending: Increments, hit: Increments
) -> tuple[str, float | None] | None:
    """``store.hit_entry`` on PostgreSQL (the producing request's row is in the same store)."""
    with con.transaction():
        row = con.execute(
            "UPDATE cache_entries SET hits = hits + 1, last_hit_at = %s WHERE id = %s"
            " RETURNING response::text, cost_usd, request_id, tenant",
            [now, entry_id],
        ).fetchone()
        if row is None:
            add_counters_pg(con, pending)
            return None
        response, cost, request_id, tenant = row
        if cost is None:
            found = con.execute("SELECT cost_usd FROM requests WHERE id = %s", [request_id]).fetchone()
            cost = None if found is None or found[0] is None else float(found[0])
            if cost is not None:
                con.execute("UPDATE cache_entries SET cost_usd = %s WHERE id = %s", [cost, entry_id])
        add_counters_pg(con, hit_increments(pending, hit, tenant, cost))
    return str(response), cost


def served_entry_pg(con: Any, request_id: str) -> str | None:
    found = con.execute("SELECT cache_entry_id FROM requests WHERE id = %s", [request_id]).fetchone()
    return None if found is None else found[0]


def next_vector_id_pg(con: Any) -> int:
    return int(con.execute("SELECT nextval('cache_vector_ids')").fetchone()[0])


class PostgresCacheStore(CacheStore):
    name: ClassVar[str] = "postgresql"
    shared: ClassVar[bool] = True

    async def load_entries(self) -> list[tuple]:
        return await self.runner.run(load_entries_pg)

    async def load_vectors(self, vector_ids: list[int] | None, dim: int) -> tuple[Any, Any]:
        return await self.runner.run(load_vectors_pg, vector_ids, dim)

    async def load_counters(self) -> Increments:
        return await self.runner.run(load_counters_pg)

    async def next_vector_id(self, local_next: int) -> int:
        return await self.runner.run(next_vector_id_pg)

    async def write_entry(
        self, row: dict[str, Any], vector: Any, response: str, victims: list[str], increments: Increments
    ) -> None:
        await self.runner.run(write_entry_pg, row, vector, response, victims, increments, self.notify)

    async def delete_entries(self, entry_ids: list[str], increments: Increments) -> None:
        await self.runner.run(delete_entries_pg, entry_ids, increments, self.notify)

    async def hit_entry(
        self, entry_id: str, now: float, pending: Increments, hit: Increments
    ) -> tuple[str, float | None] | None:
        return await self.runner.run(hit_entry_pg, entry_id, now, pending, hit)

    async def served_entry(self, request_id: str) -> str | None:
        return await self.runner.run(served_entry_pg, request_id)

    async def add_counters(self, increments: Increments) -> None:
        await self.runner.run(add_counters_pg, increments)

    async def fetch_entries(self, entry_ids: list[str], dim: int) -> list[tuple[tuple, Any]]:
        return await self.runner.run(fetch_entries_pg, entry_ids, dim)
