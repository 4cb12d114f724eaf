"""Shared fixtures.

``postgres``: one throwaway PostgreSQL 15 cluster per test session (fails loudly).
``upstream``: the fake OpenAI-compatible upstream with its demo models, one per test module
(a module that needs other behaviour defines its own ``upstream``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.postgres import Cluster, start_cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    cluster = start_cluster()  # raises PostgresError: the fleet tests fail, never skip
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database per test on the session's cluster."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    postgres.psql(f'DROP DATABASE IF EXISTS "{name}"')
    postgres.psql(f'CREATE DATABASE "{name}"')
    return postgres.url(name)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    from ops.fake_upstream import FakeUpstream, demo_config

    fake = FakeUpstream(demo_config()).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL of the test's own, for tests that stop and start it (outages)."""
    own = start_cluster()  # raises PostgresError: these tests fail, never skip
    try:
        yield own
    finally:
        own.stop()
