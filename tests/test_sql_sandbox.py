"""``POST /admin/api/sql`` sees the database and nothing else.

Every table and scalar function DuckDB lists in ``duckdb_functions()`` that takes a path, a file
pattern or a URL (or runs SQL, or reads extension/secret state) is called through the endpoint
with ``/etc/passwd``, ``/proc/self/environ`` and an https URL. None may answer with a file's
content or a 500. Which of them really touch the file system is decided by an unrestricted DuckDB
(the call's outcome differs between an existing and a missing file): each of those must be a 400
saying the query reaches outside the database (25 of 87 with DuckDB 2.0.1). Pure string
functions (``parse_path``) may answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings

SQL = "/admin/api/sql"
PATH_PARAMETERS = {"path", "paths", "file", "files", "pattern", "filename"}
RISKY_NAMES = re.compile(
    r"read_|glob|sniff|scan|parquet|extension|secret|query|sql|checkpoint|file|blob|text"
)
TARGETS = ("/etc/passwd", "/proc/self/environ", "https://example.com/data.csv")
MUST_BE_SANDBOXED = {
    "read_text",
    "read_blob",
    "read_csv",
    "read_csv_auto",
    "glob",
    "read_json",
    "read_parquet",
}
OUTSIDE = "reaches outside the database"


def risky_functions() -> list[tuple[str, str]]:
    """(name, 'table'|'scalar') that can touch a file or the network, from DuckDB's own catalogue."""
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT DISTINCT function_name, function_type, parameters FROM duckdb_functions()"
            " WHERE function_type IN ('table', 'scalar')"
        ).fetchall()
    found = {
        (name, kind)
        for name, kind, parameters in rows
        if PATH_PARAMETERS & {p.lower() for p in parameters} or RISKY_NAMES.search(name)
    }
    return sorted(found)


FUNCTIONS = risky_functions()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("sandbox")
    settings = make_settings(home, MOCK_POOL)
    mock = MockUpstream()
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as client:
        for i in range(3):
            mock.enqueue(f"answer {i}")
            assert (
                client.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}]}
                ).status_code
                == 200
            )
        yield client


def outcome(con: duckdb.DuckDBPyConnection, sql: str, directory: str) -> str:
    """The rows with the directory's name masked, or only the error's kind (messages carry hints)."""
    try:
        return str(con.execute(sql).fetchmany(5)).replace(directory, "D")
    except duckdb.Error as exc:
        return type(exc).__name__


def touches_files(name: str, kind: str) -> bool:
    """On an unrestricted DuckDB, does an existing file give another outcome than a missing one?"""
    with duckdb.connect() as con:
        there = outcome(con, call(name, kind, "/etc/passwd"), "etc")
        missing = outcome(con, call(name, kind, "/etx/passwd"), "etx")  # no such directory
    return there != missing


def call(name: str, kind: str, target: str) -> str:
    return f"SELECT * FROM {name}('{target}')" if kind == "table" else f"SELECT {name}('{target}')"


def answer(client: TestClient, sql: str) -> tuple[int, str]:
    """(status, error message or ''); never a 500, never a file's content."""
    response = client.post(SQL, json={"sql": sql})
    assert response.status_code in (200, 400), (sql, response.status_code, response.text[:300])
    assert "root:" not in response.text and "PATH=" not in response.text, sql  # no file content leaked
    if response.status_code == 200:
        return 200, ""
    error = response.json()["error"]
    assert error["message"] and error["type"] and "code" in error, sql
    return 400, error["message"]


def assert_refused(client: TestClient, sql: str) -> str:
    status, message = answer(client, sql)
    assert status == 400, sql
    return message


def test_the_catalogue_lists_the_file_readers_and_they_read_files_unrestricted() -> None:
    names = {name for name, _ in FUNCTIONS}
    assert MUST_BE_SANDBOXED <= names and len(FUNCTIONS) > 40
    readers = [f for f in FUNCTIONS if touches_files(*f)]
    assert len(readers) >= 20, readers  # read_*, glob, sniff_csv, parquet_* ...
    with duckdb.connect() as con:  # the control: an ordinary DuckDB reads the file
        assert "root:" in con.execute("SELECT content FROM read_text('/etc/passwd')").fetchone()[0]


@pytest.mark.parametrize(("name", "kind"), FUNCTIONS)
def test_every_file_or_network_function_is_refused(gateway: TestClient, name: str, kind: str) -> None:
    reads = touches_files(name, kind)
    assert reads or name not in MUST_BE_SANDBOXED  # the oracle sees the known readers read
    for target in TARGETS:
        status, message = answer(gateway, call(name, kind, target))
        if reads:  # refused; query_table's replacement scan is off, so it reports no such table
            assert status == 400 and (OUTSIDE in message or "does not exist" in message), (name, message)
        if name in MUST_BE_SANDBOXED:
            assert OUTSIDE in message, message
    # list form and replacement scans
    if kind == "table" and name in MUST_BE_SANDBOXED:
        assert OUTSIDE in assert_refused(gateway, f"SELECT * FROM {name}(['/etc/passwd'])")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'https://example.com/x.parquet'",
        "SELECT * FROM read_blob('/proc/self/environ')",
        "SELECT * FROM glob('/root/*')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "WITH t AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM t",
        "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')",
        "SELECT * FROM duckdb_extensions()",
    ],
)
def test_reads_outside_the_database_are_400(gateway: TestClient, sql: str) -> None:
    assert_refused(gateway, sql)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH"),
        ("COPY requests TO '/tmp/leak.csv'", "COPY"),
        ("EXPORT DATABASE '/tmp/leak'", "EXPORT"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("RESET lock_configuration", "SET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("CALL read_text('/etc/passwd')", "CALL"),
        ("CALL checkpoint()", "CALL"),
        ("EXPLAIN ANALYZE INSERT INTO rewards SELECT * FROM rewards", "INSERT"),
        ("EXPLAIN ANALYZE COPY requests TO '/tmp/leak.csv'", "COPY"),
        ("EXPLAIN EXPLAIN SELECT 1", "EXPLAIN"),
        ("SELECT 1; SELECT 2", "exactly one"),
    ],
)
def test_statements_other_than_reads_are_400_naming_them(gateway: TestClient, sql: str, kind: str) -> None:
    message = assert_refused(gateway, sql)
    assert kind in message, message
    assert not Path("/tmp/leak.csv").exists()


def test_ordinary_analysis_keeps_working(gateway: TestClient) -> None:
    def rows(sql: str) -> list[list[object]]:
        response = gateway.post(SQL, json={"sql": sql})
        assert response.status_code == 200, (sql, response.text)
        return response.json()["rows"]

    assert rows("SELECT count(*) FROM requests") == [[3]]
    assert rows(
        "WITH m AS (SELECT model, total_ms FROM requests) SELECT model, count(*) FROM m GROUP BY 1"
    ) == [["small", 3]]
    ranked = rows("SELECT id, row_number() OVER (ORDER BY created_at) AS n FROM requests ORDER BY n")
    assert [r[1] for r in ranked] == [1, 2, 3]
    assert rows("EXPLAIN SELECT model FROM requests WHERE status = 200")
    assert rows("EXPLAIN ANALYZE SELECT count(*) FROM requests")
    assert rows("SELECT scores->>'complexity' IS NULL OR true FROM requests LIMIT 1") == [[True]]
    assert rows("SELECT value FROM duckdb_settings() WHERE name = 'enable_external_access'") == [["false"]]
