"""Read-only SQL over the history: what ``POST /admin/api/sql`` and ``compass sql`` run.

Only one read statement is accepted (SELECT, WITH ... SELECT, EXPLAIN of one), checked with
DuckDB's own parser, not a regex. Through the server it runs on an instance with external
access off and its configuration locked (``compass.storage.db``), so a query sees the database
and nothing else; a query that reaches for a file, URL, extension or setting is a 400.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from typing import Any

from compass.errors import InvalidRequest

READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})
# EXPLAIN ANALYZE runs its statement: what follows EXPLAIN must itself be a SELECT.
EXPLAIN_PREFIX = re.compile(r"\s*EXPLAIN\s+(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\s+)?", re.IGNORECASE)
MAX_SQL_ROWS = 10_000


def check_read_only(con: Any, sql: str) -> None:
    """One SELECT (or WITH ... SELECT, or EXPLAIN of one); anything else is a 400 naming it."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidRequest(f"SQL does not parse: {exc}", param="sql") from exc
    if len(statements) != 1:
        raise InvalidRequest("send exactly one SQL statement", param="sql")
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        prefix = EXPLAIN_PREFIX.match(statements[0].query)
        try:
            inner = con.extract_statements(statements[0].query[prefix.end() :]) if prefix else []
        except duckdb.Error:
            inner = []
        kind = inner[0].type.name if len(inner) == 1 else "EXPLAIN of a statement that is not a SELECT"
        if kind == "EXPLAIN":
            kind = "nested EXPLAIN"
    if kind not in READ_STATEMENTS:
        raise InvalidRequest(
            f"only read-only queries (SELECT, WITH, EXPLAIN) are allowed here, not {kind}"
            " (ATTACH, COPY, EXPORT, INSTALL, LOAD, SET, PRAGMA and CALL are refused)",
            param="sql",
        )


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
    except duckdb.PermissionException as exc:
        raise InvalidRequest(
            f"this query reaches outside the database (files, URLs, extensions or settings), which"
            f" the SQL endpoint does not allow: {exc}",
            param="sql",
        ) from exc
    except (duckdb.Error, ValueError, TypeError, OverflowError) as exc:  # also values Python cannot hold
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
