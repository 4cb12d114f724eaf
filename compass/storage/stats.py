"""``/stats`` and ``/stats/raw``: aggregates over the ``requests`` table, scoped to a tenant."""

from __future__ import annotations

import json
from typing import Any

RAW_COLUMNS = (
    "id, created_at, tenant, stream, requested_model, model, routing_method, tier, task_type, classifier,"
    " prompt_tokens, completion_tokens, cost_usd, cache_status, routing_ms, upstream_ms, total_ms, status,"
    " error, routing, response_content"
)


def _scope(tenant: str | None) -> tuple[str, list[Any]]:
    return ("WHERE tenant = ?", [tenant]) if tenant is not None else ("", [])


def summary(con: Any, tenant: str | None) -> dict[str, Any]:
    """Totals and distributions, as the original LLM Compass ``/stats`` reported them."""
    where, params = _scope(tenant)
    total = con.execute(
        f"""
        SELECT count(*), coalesce(sum(cost_usd), 0), avg(total_ms), avg(routing_ms),
               count(*) FILTER (WHERE status >= 400), coalesce(sum(total_tokens), 0),
               count(*) FILTER (WHERE cache_status IN ('exact', 'semantic')),
               count(*) FILTER (WHERE cache_status IN ('exact', 'semantic', 'miss'))
        FROM requests {where}
        """,
        params,
    ).fetchone()
    calls, cost, avg_ms, avg_routing_ms, errors, tokens, hits, lookups = total

    def by(column: str) -> dict[str, dict[str, Any]]:
        rows = con.execute(
            f"""
            SELECT coalesce({column}, 'none') AS k, count(*), coalesce(sum(cost_usd), 0), avg(total_ms)
            FROM requests {where} GROUP BY k ORDER BY count(*) DESC, k
            """,
            params,
        ).fetchall()
        return {k: {"calls": n, "cost_usd": c, "avg_latency_ms": ms} for k, n, c, ms in rows}

    return {
        "total_calls": calls,
        "total_cost_usd": cost,
        "total_tokens": tokens,
        "errors": errors,
        "avg_latency_ms": avg_ms,
        "avg_routing_ms": avg_routing_ms,
        "cache": {"hits": hits, "lookups": lookups, "hit_rate": (hits / lookups) if lookups else None},
        "by_model": by("model"),
        "by_tier": by("tier"),
        "by_task_type": by("task_type"),
        "by_routing_method": by("routing_method"),
    }


def raw(con: Any, tenant: str | None, limit: int, offset: int) -> dict[str, Any]:
    """One page of rows, newest first."""
    where, params = _scope(tenant)
    cur = con.execute(
        f"SELECT {RAW_COLUMNS} FROM requests {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    names = [d[0] for d in cur.description]
    rows = []
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        row["created_at"] = row["created_at"].isoformat() + "Z"
        if row["routing"] is not None:
            row["routing"] = json.loads(row["routing"])
        rows.append(row)
    total = con.execute(f"SELECT count(*) FROM requests {where}", params).fetchone()[0]
    return {"object": "list", "data": rows, "limit": limit, "offset": offset, "total": total}
