"""Admin surface: Layer 2 posteriors, cache stats, read-only SQL, and the ``/admin`` page.

The page (``static/admin.html`` + ``admin.js``, charts by the vendored uPlot, no build step)
reads only the JSON endpoints here, all behind the admin key: posteriors, recent requests with
their routing and feedback, a timeline (selection share, cache hit rate, cost per time bucket)
and the savings against always calling the strongest model, both computed from the history.

``POST /admin/api/sql`` is how ``compass sql`` analyses history while the server runs: DuckDB
lets one process hold the file read-write, so queries go to the process that holds it. Only
read statements are accepted (``compass.storage.analysis``), and they run on an
instance with external access off and its configuration locked (``compass.storage.db``), so a
query sees the database and nothing else: no file, URL, extension or setting.
"""

from __future__ import annotations

import datetime as dt
import math
from importlib import resources
from pathlib import PurePosixPath
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import Parameter

from compass.errors import NotFound, PermissionDenied
from compass.http.auth import bearer_token, caller_for, keyring
from compass.services import Services
from compass.storage.analysis import MAX_SQL_ROWS, run_read_query
from compass.storage.history import utcnow

STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# The page loads only its own files; inline styles stay allowed for the charts' legends.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}


class SqlRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SQL_ROWS)] = 1000


def require_admin(request: Request, services: Services) -> None:
    caller = caller_for(request, services)
    if not getattr(caller, "is_admin", False):
        raise PermissionDenied("this endpoint needs the admin key")


def static_bytes(name: str) -> bytes:
    """A file under ``compass/http/static`` (package data, so it ships in the wheel)."""
    return resources.files("compass.http").joinpath("static", *PurePosixPath(name).parts).read_bytes()


HITS = "cache_status IN ('exact', 'semantic')"
# Bucket widths a person reads easily, in seconds; longer spans use whole days.
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


class Baseline(msgspec.Struct, frozen=True):
    """The strongest pool model, whose price every request is compared with."""

    model: str
    input_price_per_mtok: float
    output_price_per_mtok: float

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        dollars = prompt_tokens * self.input_price_per_mtok + completion_tokens * self.output_price_per_mtok
        return dollars / 1e6


def strongest_model(services: Services) -> Baseline | None:
    """Highest capability (rank, else tier), the dearer one on a tie; list prices, else LiteLLM's map."""
    from compass.upstream.litellm_client import litellm_cost

    if not services.models:
        return None
    best = max(services.models, key=lambda m: (m.capability, m.output_price_per_mtok, m.input_price_per_mtok))
    p_in, p_out = best.input_price_per_mtok, best.output_price_per_mtok
    if not p_in and not p_out:
        p_in = litellm_cost(best.litellm_model, 1_000_000, 0)
        p_out = litellm_cost(best.litellm_model, 0, 1_000_000)
    return Baseline(best.name, p_in, p_out)


def _where(tenant: str | None, *clauses: str, params: list[Any] | None = None) -> tuple[str, list[Any]]:
    parts, args = list(clauses), list(params or [])
    if tenant is not None:
        parts.append("tenant = ?")
        args.append(tenant)
    return ("WHERE " + " AND ".join(parts)) if parts else "", args


def recent_with_feedback(con: Any, tenant: str | None, limit: int) -> dict[str, Any]:
    """``/stats/raw``'s newest rows plus the feedback each one got (``None`` if none yet)."""
    from compass.storage.stats import raw

    page = raw(con, tenant, limit, 0)
    ids = [row["id"] for row in page["data"]]
    rewards = dict(
        con.execute(
            "SELECT request_id, reward FROM rewards WHERE source = 'feedback' AND NOT superseded"
            " AND list_contains(?, request_id) ORDER BY ts",
            [ids],
        ).fetchall()
        if ids
        else []
    )
    for row in page["data"]:
        row["feedback"] = rewards.get(row["id"])
    return page


def savings(con: Any, tenant: str | None, baseline: Baseline | None) -> dict[str, Any]:
    """Actual spend against the strongest model's price for the same tokens, split by model and cache."""
    # Embedding calls have no chat counterpart at the strongest model's price.
    where, params = _where(
        tenant, "status < 400", "model IS NOT NULL", "routing_method IS DISTINCT FROM 'embeddings'"
    )
    rows = con.execute(
        f"""
        SELECT model, {HITS} AS hit, count(*), coalesce(sum(cost_usd), 0),
               coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
        FROM requests {where} GROUP BY ALL ORDER BY model
        """,
        params,
    ).fetchall()
    by_model: dict[str, dict[str, float]] = {}
    actual = strongest = from_cache = 0.0
    count = 0
    for model, hit, n, cost, prompt, completion in rows:
        base = baseline.cost(prompt, completion) if baseline else 0.0
        entry = by_model.setdefault(model, {"requests": 0, "cost_usd": 0.0, "strongest_cost_usd": 0.0})
        entry["requests"] += n
        entry["cost_usd"] += cost
        entry["strongest_cost_usd"] += base
        actual, strongest, count = actual + cost, strongest + base, count + n
        if hit:
            from_cache += base - cost
    for entry in by_model.values():
        entry["saved_usd"] = entry["strongest_cost_usd"] - entry["cost_usd"]
    saved = strongest - actual
    return {
        "strongest_model": msgspec.to_builtins(baseline) if baseline else None,
        "requests": count,
        "cost_usd": actual,
        "strongest_cost_usd": strongest,
        "saved_usd": saved,
        "saved_fraction": saved / strongest if strongest > 0 else None,
        "saved_by_cache_usd": from_cache,
        "saved_by_routing_usd": saved - from_cache,
        "by_model": by_model,
    }


def bucket_width(span_s: float, buckets: int) -> int:
    raw_width = span_s / max(1, buckets)
    for step in NICE_STEPS:
        if step >= raw_width:
            return step
    return 86400 * math.ceil(raw_width / 86400)


def timeline(
    con: Any, tenant: str | None, buckets: int, window_s: float | None, baseline: Baseline | None
) -> dict[str, Any]:
    """Per time bucket: requests and selection share per model, cache hit rate, cost against the baseline."""
    clauses, params = ["model IS NOT NULL"], []
    if window_s is not None:
        clauses.append("created_at >= ?")
        params.append(utcnow() - dt.timedelta(seconds=window_s))
    where, params = _where(tenant, *clauses, params=params)
    lo, hi = con.execute(
        f"SELECT epoch(min(created_at)), epoch(max(created_at)) FROM requests {where}", params
    ).fetchone()
    result: dict[str, Any] = {
        "bucket_s": None,
        "strongest_model": baseline.model if baseline else None,
        "t": [],
        "models": [],
        "requests": {},
        "share": {},
        "total": [],
        "errors": [],
        "cache_hit_rate": [],
        "cost_usd": [],
        "strongest_cost_usd": [],
    }
    if lo is None:
        return result
    width = bucket_width(hi - lo, buckets)
    first = math.floor(lo / width)
    slots = math.floor(hi / width) - first + 1
    rows = con.execute(
        f"""
        SELECT CAST(floor(epoch(created_at) / ?) AS BIGINT) AS b, model, count(*),
               count(*) FILTER (WHERE {HITS}),
               count(*) FILTER (WHERE cache_status IN ('exact', 'semantic', 'miss')),
               count(*) FILTER (WHERE status >= 400),
               coalesce(sum(cost_usd) FILTER (WHERE status < 400), 0),
               coalesce(sum(prompt_tokens) FILTER (WHERE status < 400), 0),
               coalesce(sum(completion_tokens) FILTER (WHERE status < 400), 0)
        FROM requests {where} GROUP BY ALL ORDER BY b, model
        """,
        [width, *params],
    ).fetchall()
    models = sorted({r[1] for r in rows})
    counts = {m: [0] * slots for m in models}
    hits, lookups, errors = [0] * slots, [0] * slots, [0] * slots
    cost, base = [0.0] * slots, [0.0] * slots
    for b, model, n, hit, lookup, err, usd, prompt, completion in rows:
        i = b - first
        counts[model][i] += n
        hits[i] += hit
        lookups[i] += lookup
        errors[i] += err
        cost[i] += usd
        base[i] += baseline.cost(prompt, completion) if baseline else 0.0
    totals = [sum(counts[m][i] for m in models) for i in range(slots)]
    result.update(
        bucket_s=width,
        t=[(first + i) * width for i in range(slots)],
        models=models,
        requests=counts,
        share={m: [c / t if t else None for c, t in zip(counts[m], totals, strict=True)] for m in models},
        total=totals,
        errors=errors,
        cache_hit_rate=[h / n if n else None for h, n in zip(hits, lookups, strict=True)],
        cost_usd=cost,
        strongest_cost_usd=base,
    )
    return result


@post("/admin/api/sql", status_code=200, summary="Run one read-only DuckDB query on the history")
async def admin_sql(request: Request, data: SqlRequest, services: Services) -> dict[str, Any]:
    require_admin(request, services)
    assert services.analysis is not None
    await services.settle()
    return await services.analysis.analyse(run_read_query, data.sql, data.limit)


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
    tenant: str | None = None,
) -> dict[str, Any]:
    require_admin(request, services)
    assert services.analysis is not None
    await services.settle()
    return await services.analysis.run(recent_with_feedback, tenant, limit)


@get("/admin/api/timeline", summary="Selection share, cache hit rate and cost per time bucket")
async def admin_timeline(
    request: Request,
    services: Services,
    buckets: Annotated[int, Parameter(ge=1, le=1000)] = 48,
    window_s: Annotated[float | None, Parameter(gt=0, le=10 * 365 * 86400)] = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    require_admin(request, services)
    assert services.analysis is not None
    await services.settle()
    baseline = strongest_model(services)
    return await services.analysis.run(timeline, tenant, buckets, window_s, baseline)


@get("/admin/api/savings", summary="Cost saved versus sending every request to the strongest model")
async def admin_savings(request: Request, services: Services, tenant: str | None = None) -> dict[str, Any]:
    require_admin(request, services)
    assert services.analysis is not None
    await services.settle()
    return await services.analysis.run(savings, tenant, strongest_model(services))


@get("/admin", summary="The admin page", include_in_schema=False)
async def admin_page(request: Request, services: Services) -> Response:
    """The page itself holds no data: a browser without a key gets it with a 401 and asks for one.

    A browser cannot attach ``Authorization`` to a navigation, so the page asks the operator
    for the admin key, keeps it in ``sessionStorage`` and sends it on every API call; API
    clients (no ``text/html`` in ``Accept``) get the usual JSON 401/403.
    """
    status = 200
    if bearer_token(request) is None and "text/html" in request.headers.get("accept", ""):
        status = 200 if keyring(services).local_mode else 401
    else:
        require_admin(request, services)
    html = static_bytes("admin.html")
    return Response(content=html, media_type="text/html", status_code=status, headers=PAGE_HEADERS)


@get("/admin/static/{path:path}", summary="The admin page's script and libraries", include_in_schema=False)
async def admin_static(path: str) -> Response:
    """Public files (the page's own script, uPlot): no data, so no key, like any page asset."""
    name = path.lstrip("/")
    media_type = STATIC_TYPES.get(PurePosixPath(name).suffix)
    if media_type is None or ".." in PurePosixPath(name).parts or name.startswith("."):
        raise NotFound(f"no static file {name!r}", param="path")
    try:
        content = static_bytes(name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFound(f"no static file {name!r}", param="path") from exc
    cache = "public, max-age=86400" if name.startswith("vendor/") else "no-cache"
    return Response(
        content=content,
        media_type=media_type,
        headers={"cache-control": cache, "x-content-type-options": "nosniff"},
    )


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")]
    requests_per_minute: Annotated[float, msgspec.Meta(gt=0)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


@post("/admin/api/keys", status_code=201, summary="Create a client API key (shown once)")
async def admin_create_key(request: Request, data: KeyCreate, services: Services) -> dict[str, Any]:
    from compass.storage.keys import create_key

    require_admin(request, services)
    rows = services.rows  # the DuckDB file, or the fleet store with storage.url
    assert rows is not None
    key, record = await rows.run(create_key, data.tenant, data.requests_per_minute, data.note, rows.origin)
    await keyring(services).reload()
    return {**msgspec.to_builtins(record), "key": key}


@get("/admin/api/keys", summary="List client API keys (never the keys themselves)")
async def admin_list_keys(
    request: Request, services: Services, include_revoked: bool = False
) -> dict[str, Any]:
    from compass.storage.keys import list_keys

    require_admin(request, services)
    assert services.rows is not None
    keys = await services.rows.run(list_keys, include_revoked)
    return {"object": "list", "data": msgspec.to_builtins(keys)}


@delete("/admin/api/keys/{key_id:str}", status_code=200, summary="Revoke a client API key")
async def admin_revoke_key(request: Request, key_id: str, services: Services) -> dict[str, Any]:
    from compass.storage.keys import revoke_key

    require_admin(request, services)
    rows = services.rows
    assert rows is not None
    if not await rows.run(revoke_key, key_id, rows.origin):
        raise NotFound(f"no active key {key_id!r}", param="key_id")
    await keyring(services).reload()
    return {"id": key_id, "revoked": True}


ADMIN_HANDLERS = [
    admin_sql,
    admin_bandit,
    admin_cache,
    admin_requests,
    admin_page,
    admin_static,
    admin_timeline,
    admin_savings,
    admin_create_key,
    admin_list_keys,
    admin_revoke_key,
]
