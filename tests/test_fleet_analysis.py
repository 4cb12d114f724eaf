"""DuckDB SQL over the whole fleet: two gateways on one real PostgreSQL 15, each answering
``/stats``, the admin pages, ``POST /admin/api/sql`` and ``compass sql`` with every replica's rows,
through the sandboxed DuckDB mirror (``compass.storage.fleet_analysis``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from compass.cli.main import main as cli
from compass.storage.history import utcnow
from compass.storage.retention import RetentionTask
from tests.helpers import MOCK_POOL, make_settings
from tests.test_fleet_gateway import fleet_gateway
from tests.test_layer2_gateway import ask

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_recipes() -> list[str]:
    """The README's ``compass sql "..."`` recipes, verbatim."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r'compass sql "(.*?)"', text, flags=re.DOTALL)
    recipes = [" ".join(q.split()) for q in found if "FROM requests" in q]
    assert len(recipes) == 3, recipes
    return recipes


def sql(client: TestClient, query: str) -> dict[str, Any]:
    response = client.post("/admin/api/sql", json={"sql": query})
    assert response.status_code == 200, response.text
    return response.json()


def test_readme_recipes_stats_and_admin_pages_see_the_whole_fleet(tmp_path: Path, pg_url: str) -> None:
    with fleet_gateway(tmp_path / "a", pg_url) as a, fleet_gateway(tmp_path / "b", pg_url) as b:
        served_a = [ask(a, f"question a{i}") for i in range(6)]
        served_b = [ask(b, f"a longer question b{i} " + "word " * (40 * i)) for i in range(4)]
        b.get("/stats")  # settles b's writer: its rows are in PostgreSQL now
        for client in (a, b):
            assert client.get("/stats").json()["total_calls"] == 10
        with psycopg.connect(pg_url) as con:
            by_model = dict(con.execute("SELECT model, count(*) FROM requests GROUP BY model").fetchall())
        recipes = readme_recipes()
        day = sql(a, recipes[0])
        assert day["columns"] == ["day", "model", "calls", "usd"]
        assert {row[1]: row[2] for row in day["rows"]} == by_model
        tiers = sql(b, recipes[1])
        assert tiers["columns"] == ["tier", "n", "hit_rate"] and sum(r[1] for r in tiers["rows"]) == 10
        latency = sql(a, recipes[2])
        assert {r[0] for r in latency["rows"]} == set(by_model)
        assert all(r[1] is not None and r[1] <= r[2] for r in latency["rows"])

        # feedback through b for a request a served; a repeat supersedes it, seen by a's mirror
        target = served_a[0]["id"]
        assert b.post("/feedback", json={"id": target, "score": 0.2}).status_code == 200
        live = "SELECT reward FROM rewards WHERE source = 'feedback' AND NOT superseded AND request_id = "
        assert sql(a, f"{live}'{target}'")["rows"] == [[0.2]]
        assert b.post("/feedback", json={"id": target, "thumbs": "up"}).status_code == 200
        assert sql(a, f"{live}'{target}'")["rows"] == [[1.0]]
        recent = a.get("/admin/api/requests?limit=50").json()["data"]
        assert {r["id"] for r in recent} == {x["id"] for x in served_a + served_b}
        assert next(r for r in recent if r["id"] == target)["feedback"] == 1.0
        assert sum(a.get("/admin/api/timeline").json()["total"]) == 10
        assert a.get("/admin/api/savings").json()["requests"] == 10
        assert b.get("/stats/raw?limit=3").json()["total"] == 10

        # the sandbox still holds on the mirror
        escape = a.post("/admin/api/sql", json={"sql": "SELECT * FROM read_csv('/etc/passwd')"})
        assert escape.status_code == 400 and "outside the database" in escape.json()["error"]["message"]
        assert a.post("/admin/api/sql", json={"sql": "SET memory_limit='1GB'"}).status_code == 400


def test_compass_sql_reads_the_fleet_store_with_no_server(tmp_path: Path, pg_url: str) -> None:
    with fleet_gateway(tmp_path / "a", pg_url) as a:
        for i in range(5):
            ask(a, f"question {i}")
        a.get("/stats")
    config = tmp_path / "cli.yaml"
    config.write_text(f"home: {tmp_path / 'cli-home'}\nstorage:\n  url: {pg_url}\n", encoding="utf-8")
    runner = CliRunner()
    for recipe in readme_recipes():
        result = runner.invoke(cli, ["sql", "--config", str(config), "--format", "json", recipe])
        assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["sql", "--config", str(config), "--format", "csv", "SELECT count(*) FROM requests"]
    )
    assert result.exit_code == 0 and result.output.splitlines()[1] == "5", result.output
    refused = runner.invoke(cli, ["sql", "--config", str(config), "DELETE FROM requests"])
    assert refused.exit_code != 0 and "only read-only" in refused.output
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT count(*) FROM requests").fetchone()[0] == 5


def test_retention_purges_postgres_and_the_mirror(tmp_path: Path, pg_url: str) -> None:
    overrides = {"storage.url": pg_url, "storage.retention_days": 1}
    settings = make_settings(tmp_path / "a", MOCK_POOL, **overrides)
    from compass.http.app import create_app
    from compass.services import build_services
    from compass.upstream.mock import MockUpstream

    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        answers = [ask(client, f"secret {i}") for i in range(3)]
        assert (
            client.post("/feedback", json={"id": answers[0]["id"], "score": 1, "comment": "mine"}).status_code
            == 200
        )
        before = sql(client, "SELECT count(*) FROM requests WHERE messages IS NOT NULL")["rows"]
        assert before == [[3]]  # the mirror holds the content now
        task = RetentionTask(services)
        result = client.blocking_portal.call(task.run_once, utcnow() + dt.timedelta(days=2))
        assert result["messages"] == 3 and result["comments"] == 1
        with psycopg.connect(pg_url) as con:
            left = con.execute("SELECT messages, response_content FROM requests").fetchall()
        assert left == [(None, None)] * 3  # content gone, the rows (numbers) stay
    with fleet_gateway(tmp_path / "b", pg_url) as b:  # a fresh replica's mirror matches
        rows = sql(b, "SELECT count(*) FILTER (WHERE messages IS NOT NULL), count(*) FROM requests")["rows"]
        assert rows == [[0, 3]]
        assert sql(b, "SELECT count(*) FROM rewards WHERE comment IS NOT NULL")["rows"] == [[0]]


def test_the_mirror_never_holds_content_past_retention(tmp_path: Path, pg_url: str) -> None:
    """Rows older than retention_days that PostgreSQL's purge has not reached yet stay out of the mirror."""
    settings = make_settings(
        tmp_path / "a", MOCK_POOL, **{"storage.url": pg_url, "storage.retention_days": 1}
    )
    from compass.http.app import create_app
    from compass.services import build_services
    from compass.upstream.mock import MockUpstream

    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        ask(client, "fresh question")
        deadline = time.monotonic() + 30
        while services.extras["retention"].last_run is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the purge's run at start-up is over: the next is an hour away
        assert services.extras["retention"].last_run is not None
        old = utcnow() - dt.timedelta(days=3)
        with psycopg.connect(pg_url) as con:
            con.execute(
                "INSERT INTO requests (id, created_at, tenant, stream, status, messages, response_content)"
                " VALUES ('old', %s, 'local', false, 200, '[{\"role\": \"user\"}]', 'answer')",
                [old],
            )
        query = "SELECT id = 'old', messages IS NULL, response_content IS NULL FROM requests ORDER BY 1"
        assert sql(client, query)["rows"] == [[False, False, False], [True, True, True]]
        with psycopg.connect(pg_url) as con:  # PostgreSQL's own purge has not run: only the mirror's did
            assert con.execute("SELECT messages IS NULL FROM requests WHERE id = 'old'").fetchone() == (
                False,
            )


@pytest.mark.parametrize("store_content", ["full", "hash"])
def test_postgres_purge_matches_the_duckdb_purge(pg_url: str, store_content: str) -> None:
    import duckdb

    from compass.storage.migrations import migrate
    from compass.storage.pg_migrations import migrate as pg_migrate
    from compass.storage.retention import purge_expired, purge_expired_pg

    old, cutoff = dt.datetime(2026, 1, 1), dt.datetime(2026, 2, 1)
    row = "INSERT INTO requests (id, created_at, tenant, stream, status, messages, params, response_content)"
    values = [["old", old, "t", False, 200, '[{"role": "user"}]', '{"n": 1}', "answer é"]]
    values.append(["new", cutoff + dt.timedelta(days=1), "t", False, 200, "[]", "{}", "kept"])
    duck = duckdb.connect(":memory:")
    migrate(duck)
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg_migrate(pg)
        for v in values:
            duck.execute(row + " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", v)
            pg.execute(row + " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", v)
        want = purge_expired(duck, cutoff, store_content)
        got = purge_expired_pg(pg, cutoff, store_content)
        pg_rows = pg.execute(
            "SELECT id, messages, params, response_content FROM requests ORDER BY id"
        ).fetchall()
    duck_rows = duck.execute(
        "SELECT id, messages, params, response_content FROM requests ORDER BY id"
    ).fetchall()
    assert {k: got[k] for k in got} == {k: want[k] for k in got}
    assert [(r[0], r[1] is None, r[2] is None, r[3]) for r in pg_rows] == [
        (r[0], r[1] is None, r[2] is None, r[3]) for r in duck_rows
    ]
    expected = (
        None if store_content == "full" else "sha256:" + hashlib.sha256("answer é".encode()).hexdigest()
    )
    assert pg_rows[1][3] == expected and pg_rows[0][3] == "kept"
