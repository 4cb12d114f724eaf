"""Short versions of ``python -m ops.faults.fleet``: real ``compass serve`` replicas, a real
PostgreSQL 15 that is stopped and started under load, ``kill -9``, and Debian's nginx in front.

Each scenario starts its own throwaway cluster. The nginx test skips only when nginx is not
installed and cannot be installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.fake_upstream import FakeModelBehaviour, FakeUpstream, FakeUpstreamConfig
from ops.faults import fleet
from ops.faults.harness import POOL_SHAPE
from ops.faults.nginx import nginx_binary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    behaviour = FakeModelBehaviour(latency_ms=15.0, tokens_per_s=1000.0, completion_tokens=16)
    fake = FakeUpstream(FakeUpstreamConfig(models={name: behaviour for name in POOL_SHAPE})).start()
    yield fake
    fake.stop()


def assert_passed(name: str, figures: dict) -> None:
    failed = [line for ok, line in fleet.verdicts(name, figures) if not ok]
    assert not failed, (failed, figures)


def test_postgres_restart_under_load_serves_every_request_and_loses_no_row(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    figures = fleet.pg_restart(upstream.url, tmp_path, clients=4, phases=(1.5, 2.5, 2.5))
    assert_passed("pg_restart", figures)
    assert figures["failed"] == 0 and figures["served_while_down"] > 0
    assert figures["streams_ok"] > 0  # streams were served through the outage too
    assert figures["degraded_seen"] and figures["max_rows_waiting"] > 0
    assert figures["acked_missing"] == 0 and figures["rows_in_store"] >= figures["acked"]


def test_a_replica_killed_while_postgres_is_down_writes_its_spool_at_the_next_start(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    figures = fleet.pg_down_kill9(upstream.url, tmp_path, clients=4, phases=(1.5, 2.0))
    assert_passed("pg_down_kill9", figures)
    assert figures["acked_while_down"] > 0
    assert figures["acked_missing"] == 0 and figures["spool_left"] == 0


@pytest.mark.parametrize("scenario", ["pg_down_feedback", "pg_down_feedback_kill9"])
def test_feedback_acknowledged_while_postgres_is_down_is_stored_once_and_every_replica_agrees(
    upstream: FakeUpstream, tmp_path: Path, scenario: str
) -> None:
    figures = fleet.SCENARIOS[scenario](upstream.url, tmp_path, 3, (1.5, 2.0))
    assert_passed(scenario, figures)
    assert figures["acked_while_down_a"] > 0 and figures["rows_stored"] == figures["feedback_acked"]
    assert figures["fresh_replica_equal"] and figures["requests_with_wrong_active_row"] == 0


def ensure_nginx() -> None:
    if nginx_binary() is not None:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], capture_output=True, timeout=600)
    if nginx_binary() is None:
        pytest.skip("nginx is not installed and could not be installed (apt-get install -y nginx)")


def test_kill_9_of_one_replica_behind_nginx_fails_no_client_and_loses_no_acknowledged_row(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    ensure_nginx()
    figures = fleet.nginx_kill9(upstream.url, tmp_path, clients=6, phases=(2.5, 2.5))
    assert_passed("nginx_kill9", figures)
    assert figures["client_failures"] == 0, figures["failures"]
    assert figures["acked_by_killed"] > 0 and figures["requests_after_kill"] > 0
    assert figures["killed_acked_in_store_after_its_restart"] == figures["acked_by_killed"]


def test_bad_storage_urls_stop_start_up_quickly_naming_the_problem(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    figures = fleet.bad_config(upstream.url, tmp_path, timeout_s=2.0)
    assert set(figures) == {
        "unreachable port",
        "unknown host",
        "wrong password",
        "missing database",
        "not PostgreSQL",
        "no answer",
    }
    assert_passed("bad_config", figures)
    assert figures["no answer"]["seconds"] < 20  # bounded by connect_timeout_s, not a hang
