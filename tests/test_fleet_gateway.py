"""The gateway on the fleet store: request and reward rows land in a real PostgreSQL 15, and a
replica with a fresh home (no DuckDB history of its own) rebuilds identical posteriors from it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, free_port, make_settings
from tests.test_layer2_gateway import ask, posteriors


def fleet_gateway(home: Path, url: str) -> TestClient:
    settings = make_settings(
        home,
        MOCK_POOL,
        **{"selector.backend": "thompson", "selector.options": {"seed": 3}, "storage.url": url},
    )
    return TestClient(create_app(settings, build_services(settings, upstream=MockUpstream())))


def test_requests_and_feedback_land_in_postgres_and_a_fresh_replica_rebuilds_posteriors(
    tmp_path: Path, pg_url: str
) -> None:
    with fleet_gateway(tmp_path / "a", pg_url) as client:
        health = client.get("/health").json()
        assert health["storage"]["backend"] == "postgresql"
        assert "compass-test" not in health["storage"]["where"]  # the password stays out of /health
        answers = [ask(client, f"question {i}") for i in range(12)]
        for i, answer in enumerate(answers):
            assert (
                client.post("/feedback", json={"id": answer["id"], "score": (i % 4) / 3}).status_code == 200
            )
        assert client.post("/feedback", json={"id": answers[0]["id"], "thumbs": "up"}).status_code == 200
        live = posteriors(client)
    with psycopg.connect(pg_url) as con:
        ids = {r[0] for r in con.execute("SELECT id FROM requests")}
        rewards = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE superseded) FROM rewards WHERE source = 'feedback'"
        ).fetchone()
        first = con.execute(
            "SELECT messages, model FROM requests WHERE id = %s", [answers[0]["id"]]
        ).fetchone()
    assert ids == {a["id"] for a in answers}
    assert rewards == (13, 1)  # the repeat superseded the first score
    assert first[0][-1]["content"] == "question 0" and first[1] == answers[0]["routing"]["model"]
    con = duckdb.connect(str(tmp_path / "a" / "compass.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM requests").fetchone()[0] == 0  # not on the local file
    con.close()
    # Another replica: its own empty home, the same store. Feedback for A's request works on B too.
    with fleet_gateway(tmp_path / "b", pg_url) as other:
        rebuilt = posteriors(other)
        assert other.post("/feedback", json={"id": answers[1]["id"], "thumbs": "down"}).status_code == 200
    for context, models in live.items():
        for name, (alpha, beta, pulls) in models.items():
            assert rebuilt[context][name] == (
                pytest.approx(alpha, rel=1e-9),
                pytest.approx(beta, rel=1e-9),
                pulls,
            )


def test_serve_with_a_bad_url_stops_with_a_named_problem(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COMPASS_HOME": str(tmp_path),
        "COMPASS_DATABASE_URL": f"postgresql://compass:secret@127.0.0.1:{free_port()}/compass",
        "COMPASS_CLASSIFIER": "length",
        "COMPASS_CACHE": "false",
        "COMPASS_PORT": str(free_port()),
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "compass.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "cannot reach the PostgreSQL server" in output and "storage.url" in output, output
    assert "secret" not in output
    assert time.monotonic() - started < 30


def test_workers_refuse_in_embedded_mode_naming_storage_url(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from compass.cli.main import main

    env = {"COMPASS_HOME": str(tmp_path), "COMPASS_CLASSIFIER": "length", "COMPASS_CACHE": "false"}
    result = CliRunner().invoke(main, ["serve", "--workers", "2"], env=env)
    assert result.exit_code != 0
    assert "storage.url" in result.output and "COMPASS_DATABASE_URL" in result.output
