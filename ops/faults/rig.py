"""A gateway process wired to a fake upstream whose behaviour a scenario changes at run time."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ops.fake_upstream import FakeModelBehaviour, FakeUpstreamConfig
from ops.faults.client import Reply, chat, fake_root
from ops.faults.harness import admin_headers, env_offline
from ops.procs import GatewayProcess


class Rig:
    """``with Rig(upstream_url, config, home) as rig:`` a started gateway; ``rig.configure(...)``."""

    def __init__(
        self,
        upstream_url: str,
        config: dict[str, Any],
        home: Path,
        admin_key: str | None = None,
    ) -> None:
        self.upstream_url = upstream_url
        self.admin_key = admin_key
        self.gateway = GatewayProcess(home, config, env=env_offline())

    @property
    def url(self) -> str:
        return self.gateway.url

    def __enter__(self) -> Rig:
        self.gateway.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.gateway.stop()

    def configure(self, models: dict[str, FakeModelBehaviour], seed: int | None = None) -> None:
        """Replace the fake upstream's behaviours (``POST /fake/config``)."""
        config = FakeUpstreamConfig(models=models, seed=seed)
        response = httpx.post(
            f"{fake_root(self.upstream_url)}/fake/config", content=msgspec.json.encode(config), timeout=10
        )
        response.raise_for_status()

    def sql(self, query: str) -> list[list[Any]]:
        response = httpx.post(
            f"{self.url}/admin/api/sql",
            json={"sql": query, "limit": 10_000},
            headers=admin_headers(self.admin_key),
            timeout=60,
        )
        response.raise_for_status()
        return response.json()["rows"]

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", headers=admin_headers(self.admin_key), timeout=30)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def wait_rows(self, ids: list[str], timeout_s: float = 10.0) -> dict[str, list[Any]]:
        """``id → [status, stream, error, response_content, attempts]`` once every id has a row."""
        wanted = [i for i in ids if i]
        deadline = time.monotonic() + timeout_s
        found: dict[str, list[Any]] = {}
        while True:
            if wanted:
                quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in wanted)
                rows = self.sql(
                    "SELECT id, status, stream, error, response_content, attempts FROM requests"
                    f" WHERE id IN ({quoted})"
                )
                found = {r[0]: r[1:] for r in rows}
            if len(found) >= len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    async def burst(
        self,
        jobs: list[tuple[str, bool]],
        concurrency: int = 8,
        timeout_s: float = 60.0,
        **extra: Any,
    ) -> list[Reply]:
        """Send ``(prompt, stream)`` jobs with at most ``concurrency`` in flight; replies in job order."""
        import aiohttp

        gate = asyncio.Semaphore(concurrency)
        headers = admin_headers(self.admin_key)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:

            async def one(prompt: str, stream: bool) -> Reply:
                async with gate:
                    return await chat(session, self.url, prompt, stream, timeout_s, headers, **extra)

            return list(await asyncio.gather(*(one(p, s) for p, s in jobs)))


def attempts_of(value: Any) -> list[dict[str, Any]]:
    """The ``attempts`` column as a list, whether the SQL endpoint returned it parsed or as text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return value if isinstance(value, list) else []
