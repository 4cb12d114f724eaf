"""Shared benchmark plumbing: an aiohttp load client, percentiles, tables, JSON results."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(latencies_ms: list[float], wall_s: float, errors: int) -> dict[str, float]:
    return {
        "n": len(latencies_ms),
        "errors": errors,
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": statistics.fmean(latencies_ms) if latencies_ms else float("nan"),
        "rps": len(latencies_ms) / wall_s if wall_s > 0 else float("nan"),
    }


async def post_and_read(
    session: Any, url: str, body: dict[str, Any], stream: bool, headers: dict[str, str] | None = None
) -> bool:
    """POST ``body`` and read the whole answer (every SSE chunk when streaming): True on a 200."""
    async with session.post(url, json=body, headers=headers) as response:
        if stream:
            async for _ in response.content:
                pass
        else:
            await response.read()
        return response.status == 200


async def load(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    concurrency: int,
    requests: int,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    max_seconds: float = 600.0,
) -> dict[str, float]:
    """``requests`` POSTs from ``concurrency`` workers; bounded in count and time; loopback only."""
    import aiohttp

    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError("benchmarks only send traffic to loopback addresses")
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            if time.monotonic() > deadline:
                return
            body = make_body(i)
            if stream:
                body = {**body, "stream": True}
            start = time.perf_counter()
            try:
                ok = await post_and_read(session, url, body, stream, headers)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(latencies, wall, errors)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (pasteable into BENCHMARKS.md), printed and returned."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    return text
