"""Admin surface: Layer 2 posteriors, cache stats, read-only SQL, and the ``/admin`` page.

``POST /admin/api/sql`` is how ``compass sql`` analyses history while the server runs: DuckDB
lets one process hold the file read-write, so queries go to the process that holds it. Only
read statements are accepted (checked with DuckDB's own parser, not a regex).
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from importlib import resources
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import Parameter

from compass.auth import caller_for
from compass.errors import InvalidRequest, NotFound, PermissionDenied
from compass.services import Services

READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})
MAX_SQL_ROWS = 10_000


class SqlRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SQL_ROWS)] = 1000


def require_admin(request: Request, services: Services) -> None:
    caller = caller_for(request, services)
    if not getattr(caller, "is_admin", False):
        raise PermissionDenied("this endpoint needs the admin key")


def check_read_only(con: Any, sql: str) -> None:
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidRequest(f"SQL does not parse: {exc}", param="sql") from exc
    if len(statements) != 1:
        raise InvalidRequest("send exactly one SQL statement", param="sql")
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise InvalidRequest(f"only read-only queries are allowed here, not {kind}", param="sql")


def jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def run_read_query(con: Any, sql: str, limit: int) -> dict[str, Any]:
    import duckdb

    check_read_only(con, sql)
    try:
        cur = con.cursor()
        try:
            result = cur.execute(sql)
            columns = [d[0] for d in result.description] if result.description else []
            types = [str(d[1]) for d in result.description] if result.description else []
            rows = result.fetchmany(limit + 1)
        finally:
            cur.close()
    except duckdb.Error as exc:
        raise InvalidRequest(f"SQL error: {exc}", param="sql") from exc
    truncated = len(rows) > limit
    rows = rows[:limit]
    return {
        "columns": columns,
        "types": types,
        "rows": [[jsonable(v) for v in row] for row in rows],
        "row_count": len(rows),
        "truncated": truncated,
    }


@post("/admin/api/sql", status_code=200, summary="Run one read-only DuckDB query on the history")
async def admin_sql(request: Request, data: SqlRequest, services: Services) -> dict[str, Any]:
    require_admin(request, services)
    assert services.db is not None
    await services.settle()
    return await services.db.run(run_read_query, data.sql, data.limit)


@get("/admin/api/bandit", summary="Layer 2 posteriors per context and model")
async def admin_bandit(request: Request, services: Services) -> dict[str, Any]:
    require_admin(request, services)
    assert services.selector is not None
    return services.selector.snapshot()


@get("/admin/api/cache", summary="Layer 3 statistics")
async def admin_cache(request: Request, services: Services) -> dict[str, Any]:
    require_admin(request, services)
    return services.cache.stats() if services.cache else {"enabled": False}


@get("/admin/api/requests", summary="Recent requests with their routing explanation")
async def admin_requests(
    request: Request,
    services: Services,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    from compass.stats import raw

    require_admin(request, services)
    assert services.db is not None
    await services.settle()
    return await services.db.run(raw, None, limit, 0)


@get("/admin", summary="The admin page", include_in_schema=False)
async def admin_page(request: Request, services: Services) -> Response:
    require_admin(request, services)
    html = resources.files("compass").joinpath("static/admin.html").read_text(encoding="utf-8")
    return Response(content=html, media_type="text/html")


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")]
    requests_per_minute: Annotated[float, msgspec.Meta(gt=0)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


@post("/admin/api/keys", status_code=201, summary="Create a client API key (shown once)")
async def admin_create_key(request: Request, data: KeyCreate, services: Services) -> dict[str, Any]:
    from compass.auth import keyring
    from compass.keys import create_key

    require_admin(request, services)
    assert services.db is not None
    key, record = await services.db.run(create_key, data.tenant, data.requests_per_minute, data.note)
    await keyring(services).reload()
    return {**msgspec.to_builtins(record), "key": key}


@get("/admin/api/keys", summary="List client API keys (never the keys themselves)")
async def admin_list_keys(
    request: Request, services: Services, include_revoked: bool = False
) -> dict[str, Any]:
    from compass.keys import list_keys

    require_admin(request, services)
    assert services.db is not None
    return {"object": "list", "data": msgspec.to_builtins(await services.db.run(list_keys, include_revoked))}


@delete("/admin/api/keys/{key_id:str}", status_code=200, summary="Revoke a client API key")
async def admin_revoke_key(request: Request, key_id: str, services: Services) -> dict[str, Any]:
    from compass.auth import keyring
    from compass.keys import revoke_key

    require_admin(request, services)
    assert services.db is not None
    if not await services.db.run(revoke_key, key_id):
        raise NotFound(f"no active key {key_id!r}", param="key_id")
    await keyring(services).reload()
    return {"id": key_id, "revoked": True}


ADMIN_HANDLERS = [
    admin_sql,
    admin_bandit,
    admin_cache,
    admin_requests,
    admin_page,
    admin_create_key,
    admin_list_keys,
    admin_revoke_key,
]
