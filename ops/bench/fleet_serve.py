"""Fleet serving, side by side in one run on one throwaway PostgreSQL 15 and the instant fake upstream.

* throughput (req/s at concurrency ``--concurrency``) of ``compass serve --workers 1`` and ``2`` on
  the fleet store, Layer 1 off (``length``) and on (``embedding``), cache off, and LiteLLM proxy
  with the same number of workers (``--num_workers``), as ratios;
* latency at concurrency 1: embedded DuckDB against the fleet store (one worker, Layer 1 off);
* memory: RSS of every worker after the load;
* rows/s that the PostgreSQL takes from history writers (``insert_requests_pg``, 256-row COPY
  batches) with 1, 2 and 4 writer connections.

The load client runs on the same machine (2 cores here), so it takes CPU from the workers;
``ops.bench.fleet_workers`` compares 1 and 2 workers with a cheap load rig (wrk, nginx) and the
CPU of every process.

    python -m ops.bench.fleet_serve [--requests 1500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ops.bench.common import load, write_json
from ops.bench.memory import rss_mib
from ops.bench.vs_litellm import BENCH_KEY, LITELLM_VENV, QUIET_ENV, LiteLLMProxy, process_tree
from ops.fake_upstream import instant_config, spawn_fake_upstream
from ops.procs import GatewayProcess

MODELS = {"demo-small": "simple", "demo-medium": "medium", "demo-large": "complex"}
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}


def log(message: str) -> None:
    print(f"[fleet_serve {time.strftime('%H:%M:%S')}] {message}", flush=True)


def config(fake_url: str, classifier: str, pg_url: str | None) -> dict[str, Any]:
    pool = [
        {"name": n, "litellm_model": f"openai/{n}", "api_base": fake_url, "api_key": "k", "tier": t}
        for n, t in MODELS.items()
    ]
    storage: dict[str, Any] = {"flush_interval_ms": 20}
    if pg_url:
        storage["url"] = pg_url
    return {
        "models": pool,
        "classifier": {"backend": classifier},
        "cache": {"enabled": False},
        "security": {"admin_key": BENCH_KEY},
        "storage": storage,
    }


def body(i: int, model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}]}


def measure(url: str, model: str, concurrency: int, requests: int) -> dict[str, float]:
    asyncio.run(
        load(url, lambda i: body(10_000_000 + i, model), concurrency, max(50, concurrency * 4), False, AUTH)
    )
    return asyncio.run(
        load(url, lambda i: body(i, model), concurrency, requests, False, AUTH, max_seconds=120)
    )


def workers_rss(pid: int) -> list[float]:
    """RSS of the serving processes: the children of a supervisor, or the process itself."""
    tree = process_tree(pid)
    out = []
    for member in tree:
        try:
            cmd = Path(f"/proc/{member}/cmdline").read_bytes()
        except OSError:
            continue
        if member != pid and (b"multiprocessing" in cmd or b"spawn_main" in cmd or b"litellm" in cmd):
            out.append(rss_mib(member))
    return out or [rss_mib(pid)]


def pg_rows_per_s(url: str, writers: int, seconds: float = 4.0) -> float:
    from compass.storage.pg_rows import insert_requests_pg
    from compass.storage.postgres import connect

    def row(i: int, w: int) -> dict[str, Any]:
        import datetime as dt

        return {
            "id": f"bench-{w}-{i}-{time.monotonic_ns()}",
            "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "tenant": "t",
            "stream": False,
            "model": "demo-small",
            "tier": "simple",
            "routing": {"model": "demo-small", "method": "bandit", "candidates": list(MODELS)},
            "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
            "response_content": "An answer of typical length, with a few sentences in it. " * 4,
            "prompt_tokens": 20,
            "completion_tokens": 60,
            "total_tokens": 80,
            "cost_usd": 0.0001,
            "total_ms": 3.0,
            "status": 200,
            "demo": False,
        }

    counts = [0] * writers
    stop = time.monotonic() + seconds

    def writer(w: int) -> None:
        con = connect(url)
        i = 0
        while time.monotonic() < stop:
            insert_requests_pg(con, [row(i + k, w) for k in range(256)])
            i += 256
        counts[w] = i
        con.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    from tests.postgres import start_cluster

    cluster = start_cluster()
    fake = spawn_fake_upstream(instant_config(*MODELS), port=0)
    results: dict[str, Any] = {"concurrency": args.concurrency, "throughput": [], "latency_c1": {}}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for name, classifier, pg, _workers in (
                ("embedded DuckDB", "length", False, 1),
                ("fleet", "length", True, 1),
            ):
                home = Path(scratch) / f"lat-{name.replace(' ', '_')}"
                with GatewayProcess(
                    home, config(fake.url, classifier, cluster.url() if pg else None), env=QUIET_ENV
                ) as g:
                    cell = measure(f"{g.url}/v1/chat/completions", "auto", 1, args.latency_requests)
                    results["latency_c1"][name] = cell
                    log(f"c=1 {name}: p50 {cell['p50_ms']:.2f} ms")
            for classifier in ("length", "embedding"):
                for workers in (1, 2):
                    home = Path(scratch) / f"{classifier}-{workers}"
                    gateway = GatewayProcess(
                        home,
                        config(fake.url, classifier, cluster.url()),
                        env=QUIET_ENV,
                        args=["--workers", str(workers)],
                    )
                    g = gateway.start(timeout_s=240)
                    try:
                        health = httpx.get(f"{g.url}/health", timeout=10).json()["layers"]["classifier"]
                        cell = measure(
                            f"{g.url}/v1/chat/completions", "auto", args.concurrency, args.requests
                        )
                        assert g.process is not None
                        cell["rss_mib"] = workers_rss(g.process.pid)
                        cell["classifier"] = health.get("backend")
                    finally:
                        g.stop()
                    results["throughput"].append(
                        {"target": f"Compass, classifier {classifier}", "workers": workers, **cell}
                    )
                    log(f"{classifier} workers={workers}: {cell['rps']:.0f} req/s, rss {cell['rss_mib']}")
            if not args.no_litellm and (LITELLM_VENV / "bin" / "litellm").exists():
                for workers in (1, 2):
                    proxy = LiteLLMProxy(Path(scratch) / f"litellm-{workers}", fake.url, workers=workers)
                    proxy.config["model_list"] = [
                        {
                            "model_name": n,
                            "litellm_params": {"model": f"openai/{n}", "api_base": fake.url, "api_key": "k"},
                        }
                        for n in MODELS
                    ]
                    proxy.start()
                    try:
                        cell = measure(
                            f"{proxy.url}/v1/chat/completions", "demo-small", args.concurrency, args.requests
                        )
                        assert proxy.process is not None
                        cell["rss_mib"] = workers_rss(proxy.process.pid)
                    finally:
                        proxy.stop()
                    results["throughput"].append({"target": "LiteLLM proxy", "workers": workers, **cell})
                    log(f"litellm workers={workers}: {cell['rps']:.0f} req/s")
            results["pg_rows_per_s"] = {str(w): pg_rows_per_s(cluster.url(), w) for w in (1, 2, 4)}
            log(f"pg rows/s {results['pg_rows_per_s']}")
    finally:
        fake.terminate()
        cluster.stop()
    by = {(r["target"], r["workers"]): r["rps"] for r in results["throughput"]}
    results["ratios"] = {
        f"{t} 2/1 workers": by[(t, 2)] / by[(t, 1)]
        for t in {k[0] for k in by}
        if (t, 1) in by and (t, 2) in by
    }
    for w in (1, 2):
        for c in ("length", "embedding"):
            if ("LiteLLM proxy", w) in by:
                results["ratios"][f"Compass {c} / LiteLLM, {w} workers"] = (
                    by[(f"Compass, classifier {c}", w)] / by[("LiteLLM proxy", w)]
                )
    lat = results["latency_c1"]
    results["fleet_added_p50_ms"] = lat["fleet"]["p50_ms"] - lat["embedded DuckDB"]["p50_ms"]
    log(f"ratios {results['ratios']}; fleet adds {results['fleet_added_p50_ms']:.3f} ms p50 at c=1")
    write_json("fleet_serve", results)


if __name__ == "__main__":
    main()
