"""Sustained load against a real gateway process: success rate, latency, throughput and RSS over time.

A fake upstream (child process, hosted-model latencies) serves the pool; ``--clients`` aiohttp
clients send chat requests back to back for ``--duration`` seconds, ``--stream-share`` of them
streamed, and grade a share of the answers with ``/fake/grade`` → ``/feedback`` so Layer 2 learns
while loaded. The gateway's RSS is sampled every few seconds: memory must stay flat once warm.
Loopback only; bounded in time (duration + drain) and in clients.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ops.bench.common import percentile, print_table, write_json
from ops.fake_upstream import spawn_fake_upstream
from ops.faults.client import Reply, chat, fake_root, grade_and_feedback, make_request
from ops.faults.harness import env_offline, gateway_config, home_dir, realistic_config, rss_kib, slope_per_min
from ops.procs import GatewayProcess

MAX_CLIENTS = 512
MAX_DURATION_S = 3600


@dataclass
class LoadOptions:
    clients: int = 64
    duration_s: float = 300.0
    stream_share: float = 0.5
    feedback_share: float = 0.3
    repeat_share: float = 0.2  # prompts from a small fixed set (cache hits when the cache is on)
    sample_every_s: float = 5.0
    speedup: float = 1.0  # divide the fake upstream's latencies
    full_layers: bool = True  # the default layers (MiniLM classifier, cache); off: length + no cache
    durability: str = "batched"
    # The cache grows until max_entries by design; a cap the run reaches early lets the RSS slope
    # show leaks rather than a cache filling up (None: the gateway's default, 100,000).
    cache_max_entries: int | None = 2000
    warmup_share: float = 0.5  # RSS slope is measured over the run's second half (warm)
    max_rss_slope_mib_per_min: float = 2.0
    seed: int = 1
    out: str | None = "load"


@dataclass
class LoadState:
    replies: list[Reply] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t_s, MiB)
    duckdb: list[tuple[float, float]] = field(default_factory=list)  # (t_s, MiB DuckDB says it holds)
    served: dict[float, int] = field(default_factory=dict)  # t_s → requests answered by then
    completed_at: list[float] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_failed: int = 0


async def drive(options: LoadOptions, base_url: str, upstream_url: str, pid: int) -> LoadState:
    """Run the clients and the RSS sampler until the deadline; returns everything observed."""
    import aiohttp

    state = LoadState()
    start = time.monotonic()
    deadline = start + options.duration_s
    root = fake_root(upstream_url)

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(options.seed * 1000 + index)
        while time.monotonic() < deadline:
            prompt, extra = make_request(rng, options.repeat_share)
            stream = rng.random() < options.stream_share
            reply = await chat(session, base_url, prompt, stream, timeout_s=120, **extra)
            state.replies.append(reply)
            state.completed_at.append(reply.finished_at - start)
            if reply.ok and rng.random() < options.feedback_share:
                try:
                    sent = await grade_and_feedback(session, root, base_url, reply)
                except (aiohttp.ClientError, TimeoutError):
                    sent = False
                state.feedback_sent += sent
                state.feedback_failed += not sent

    async def sampler(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline + 1:
            duck = await duckdb_mib(session, base_url)
            kib = rss_kib(pid)
            if kib is not None:
                state.rss.append((time.monotonic() - start, kib / 1024))
                state.served[state.rss[-1][0]] = len(state.replies)
                if duck is not None:
                    state.duckdb.append((state.rss[-1][0], duck))
            await asyncio.sleep(options.sample_every_s)

    connector = aiohttp.TCPConnector(limit=options.clients * 2 + 8)
    async with aiohttp.ClientSession(connector=connector) as session:
        sampling = asyncio.create_task(sampler(session))
        await asyncio.gather(*(client(i, session) for i in range(options.clients)))
        await sampling
    return state


async def duckdb_mib(session: Any, base_url: str) -> float | None:
    """What DuckDB holds in memory (tables not yet checkpointed, buffers, indexes), in MiB.

    Rows are data, not a leak: subtracting this from RSS leaves the process's own memory.
    """
    query = {"sql": "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()"}
    try:
        async with session.post(f"{base_url}/admin/api/sql", json=query) as response:
            return float((await response.json())["rows"][0][0]) / 2**20
    except Exception:
        return None


def per_requests(samples: list[tuple[float, float]], served: dict[float, int]) -> float | None:
    """MiB of growth per 10,000 requests: a leak grows with traffic, a warm-up plateau does not."""
    points = [(served[t] / 10_000, v) for t, v in samples if t in served]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    return slope_per_min(points) / 60  # slope_per_min scales by 60; undo it


def summarize(options: LoadOptions, state: LoadState, wall_s: float) -> dict[str, Any]:
    replies = state.replies
    ok = [r for r in replies if r.ok]
    by_kind: dict[str, Any] = {}
    for kind, stream in (("non_stream", False), ("stream", True)):
        group = [r for r in replies if r.stream is stream]
        good = [r.ms for r in group if r.ok]
        by_kind[kind] = {
            "requests": len(group),
            "ok": len(good),
            "p50_ms": percentile(good, 50),
            "p99_ms": percentile(good, 99),
        }
        if stream:
            ttft = [r.ttft_ms for r in group if r.ok and r.ttft_ms is not None]
            by_kind[kind]["ttft_p50_ms"] = percentile(ttft, 50)
            by_kind[kind]["ttft_p99_ms"] = percentile(ttft, 99)
    statuses: dict[str, int] = {}
    for reply in replies:
        if not reply.ok:
            key = reply.transport_error.split(":")[0] if reply.transport_error else str(reply.status)
            statuses[key] = statuses.get(key, 0) + 1
    rss = state.rss
    warm_from = options.warmup_share * options.duration_s
    warm = [s for s in rss if s[0] >= warm_from] or rss
    duck = dict(state.duckdb)
    own = [(t, v - duck[t]) for t, v in rss if t in duck]  # RSS less what DuckDB holds
    own_warm = [s for s in own if s[0] >= warm_from] or own
    latencies = [r.ms for r in ok]
    return {
        "requests": len(replies),
        "ok": len(ok),
        "success_rate": len(ok) / len(replies) if replies else float("nan"),
        "failures_by_status": statuses,
        "rps": len(replies) / wall_s if wall_s else float("nan"),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "by_kind": by_kind,
        "feedback_sent": state.feedback_sent,
        "feedback_failed": state.feedback_failed,
        "rss_mib": {
            "start": rss[0][1] if rss else None,
            "mid": rss[len(rss) // 2][1] if rss else None,
            "end": rss[-1][1] if rss else None,
            "max": max(v for _, v in rss) if rss else None,
            "slope_mib_per_min_after_warmup": slope_per_min(warm),
            "slope_mib_per_min_whole_run": slope_per_min(rss),
            "duckdb_start": state.duckdb[0][1] if state.duckdb else None,
            "duckdb_end": state.duckdb[-1][1] if state.duckdb else None,
            "slope_excluding_duckdb_after_warmup": slope_per_min(own_warm) if own_warm else None,
            "per_10k_requests_excluding_duckdb_after_warmup": per_requests(own_warm, state.served),
            "samples_t_rss_duckdb_served": [
                [round(t, 1), round(v, 1), round(duck.get(t, float("nan")), 1), state.served.get(t)]
                for t, v in rss
            ],
        },
    }


def gateway_checks(gateway: GatewayProcess, summary: dict[str, Any]) -> dict[str, Any]:
    """What the gateway recorded: rows vs answers, breaker trips, bandit pulls."""
    health = httpx.get(f"{gateway.url}/health", timeout=30).json()
    rows = gateway.sql("SELECT count(*), count(*) FILTER (WHERE status = 200) FROM requests")[0]
    feedback = gateway.sql("SELECT count(*) FROM rewards WHERE source = 'feedback'")[0][0]
    log = gateway.log_path.read_text(encoding="utf-8", errors="replace")
    return {
        "log_errors": sum(line.startswith("ERROR") for line in log.splitlines()),
        "rows_not_stored": log.count("could not be stored"),
        "rows": rows[0],
        "rows_200": rows[1],
        "feedback_rows": feedback,
        "breakers": health.get("breakers"),
        "cache": health.get("layers", {}).get("cache"),
        "problems": health.get("problems"),
        "history": health.get("history"),
        "answered_ok": summary["ok"],
    }


def cache_section(options: LoadOptions) -> dict[str, dict[str, Any]]:
    if not options.full_layers or options.cache_max_entries is None:
        return {}
    return {"cache": {"options": {"max_entries": options.cache_max_entries}}}


def run(options: LoadOptions) -> dict[str, Any]:
    """Start the fake upstream and the gateway, drive the load, stop both; returns the result."""
    if not 1 <= options.clients <= MAX_CLIENTS or not 0 < options.duration_s <= MAX_DURATION_S:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS} and duration 0..{MAX_DURATION_S}s")
    upstream = spawn_fake_upstream(realistic_config(seed=options.seed, speedup=options.speedup))
    home = home_dir("load")
    config = gateway_config(
        upstream.url,
        timeout_s=30.0,
        fast_layers=not options.full_layers,
        storage={"durability": options.durability},
        server={"log_level": "warning"},
        **cache_section(options),
    )
    gateway = GatewayProcess(home, config, env=env_offline())
    try:
        gateway.start()
        assert gateway.process is not None
        started = time.monotonic()
        state = asyncio.run(drive(options, gateway.url, upstream.url, gateway.process.pid))
        wall = time.monotonic() - started
        summary = summarize(options, state, wall)
        summary["gateway"] = gateway_checks(gateway, summary)
        exit_code = gateway.stop()
        summary["gateway"]["exit_code"] = exit_code
    finally:
        gateway.stop()
        upstream.terminate()
    rss = summary["rss_mib"]
    # The process's own memory must be flat once warm; DuckDB's share grows with the rows it holds
    # until a checkpoint (bounded by its memory_limit), and is reported beside it.
    own_slope = rss["slope_excluding_duckdb_after_warmup"]
    slope = own_slope if own_slope is not None else rss["slope_mib_per_min_after_warmup"]
    summary["rss_flat"] = slope <= options.max_rss_slope_mib_per_min
    summary["passed"] = bool(
        summary["success_rate"] == 1.0
        and summary["rss_flat"]
        and summary["gateway"]["rows"] >= summary["requests"]
    )
    summary["options"] = options.__dict__
    summary["home"] = str(home)
    return summary


def report(summary: dict[str, Any], options: LoadOptions) -> None:
    rss = summary["rss_mib"]
    rows = [
        [
            options.clients,
            options.duration_s,
            summary["requests"],
            f"{summary['success_rate'] * 100:.2f}%",
            summary["rps"],
            summary["p50_ms"],
            summary["p99_ms"],
            summary["by_kind"]["stream"]["ttft_p50_ms"],
            rss["start"],
            rss["mid"],
            rss["end"],
            rss["slope_mib_per_min_after_warmup"],
            rss["duckdb_end"],
            rss["slope_excluding_duckdb_after_warmup"],
        ]
    ]
    print_table(
        "Sustained load (fake upstream with hosted-model latencies)",
        [
            "clients",
            "duration s",
            "requests",
            "success",
            "req/s",
            "p50 ms",
            "p99 ms",
            "stream TTFT p50 ms",
            "RSS start MiB",
            "RSS mid MiB",
            "RSS end MiB",
            "RSS slope MiB/min (2nd half)",
            "DuckDB MiB (end)",
            "RSS-DuckDB slope MiB/min (2nd half)",
        ],
        rows,
    )
    gateway = summary["gateway"]
    print(
        f"history rows {gateway['rows']} (200: {gateway['rows_200']}) for {summary['requests']} requests; "
        f"feedback sent {summary['feedback_sent']} (failed {summary['feedback_failed']}), "
        f"rows {gateway['feedback_rows']}; failures {summary['failures_by_status'] or 'none'}; "
        f"gateway exit code {gateway['exit_code']}"
    )
    per_10k = summary["rss_mib"]["per_10k_requests_excluding_duckdb_after_warmup"]
    if per_10k is not None:
        print(f"RSS less DuckDB, 2nd half: {per_10k:+.2f} MiB per 10,000 requests")
    print(("PASS" if summary["passed"] else "FAIL") + f" (RSS flat: {summary['rss_flat']})")
    if options.out:
        path = write_json(options.out, summary)
        print(f"wrote {path}")
