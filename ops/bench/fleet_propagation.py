"""Fleet propagation: how fast one replica's change reaches another, and how the change log is read.

Part 1, replicas: two real ``compass serve`` processes on one PostgreSQL (a throwaway cluster from
tests/postgres.py unless ``--url``), the fake upstream behind both. Delay from the acknowledgement
on one replica to the change being visible on the other, p50/p99 over ``--trials`` changes each:

- reward: ``POST /feedback`` on B for a request A served, until A's ``/admin/api/bandit`` moves;
- cache entry: A answers a new question (a miss; A stores it after answering), until B's
  ``/admin/api/cache`` counts the entry (it then serves it: tests/test_fleet_replicas.py);
- key revocation: ``DELETE /admin/api/keys/ID`` on A, until B answers that key with 401.

The client polls every ~2 ms, so each figure includes up to one poll round trip.

Part 2, the log: ``--writers`` threads append ``--events`` events whose transactions stay open a
random 0..``--jitter-ms`` after the insert, so ids commit out of order (as replicas' do). In the
same run three followers read the same log: the naive identity watermark (``id > last``, polled
every 5 ms), ``fleet_log.Position`` polled every 250 ms, and ``Position`` woken by LISTEN/NOTIFY
(the design). Reported: events missed, applied twice, and the delay from commit to read.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ops.bench.common import percentile, print_table, write_json

ADMIN = "adm-bench-fleet"


def _gateways(url: str, root: Path) -> tuple[Any, Any, Any]:
    from ops.fake_upstream import FakeUpstream, demo_config
    from ops.procs import GatewayProcess

    upstream = FakeUpstream(demo_config()).start()
    pool = [
        {
            "name": name,
            "litellm_model": f"openai/{name}",
            "api_base": upstream.url,
            "api_key": "k",
            "input_price_per_mtok": price,
            "output_price_per_mtok": price * 4,
            "tier": tier,
        }
        for name, price, tier in [("demo-small", 0.1, "simple"), ("demo-large", 10.0, "complex")]
    ]
    config = {
        "models": pool,
        "selector": {"backend": "thompson"},
        "classifier": {"backend": "length"},
        "cache": {"enabled": True},
        "security": {"admin_key": ADMIN},
        "storage": {"url": url, "flush_interval_ms": 5},
    }
    a = GatewayProcess(root / "a", config).start(timeout_s=300)
    b = GatewayProcess(root / "b", config).start(timeout_s=300)
    return upstream, a, b


def _until(check: Any, limit_s: float = 10.0) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > limit_s:
            return float("inf")
        time.sleep(0.002)
    return time.perf_counter() - started


def _ask(http: httpx.Client, text: str) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()


def replicas(url: str, root: Path, trials: int) -> dict[str, list[float]]:
    upstream, a_proc, b_proc = _gateways(url, root)
    headers = {"authorization": f"Bearer {ADMIN}"}
    delays: dict[str, list[float]] = {"reward": [], "cache entry": [], "key revocation": []}
    try:
        with (
            httpx.Client(base_url=a_proc.url, headers=headers, timeout=60) as a,
            httpx.Client(base_url=b_proc.url, headers=headers, timeout=60) as b,
            httpx.Client(base_url=b_proc.url, timeout=60) as b_plain,
        ):
            for i in range(trials):
                served = _ask(a, f"reward trial {i} {random.random()}")["id"]
                before = a.get("/admin/api/bandit").text
                b.post(
                    "/feedback", json={"id": served, "thumbs": "up" if i % 2 else "down"}
                ).raise_for_status()
                delays["reward"].append(_until(lambda p=before: a.get("/admin/api/bandit").text != p))

                count = b.get("/admin/api/cache").json()["entries"]
                _ask(a, f"a question never asked before, number {i} {random.random()}")
                delays["cache entry"].append(
                    _until(lambda c=count: b.get("/admin/api/cache").json()["entries"] > c)
                )

                made = a.post("/admin/api/keys", json={"tenant": f"bench-{i}"}).json()
                key = {"authorization": f"Bearer {made['key']}"}
                _until(lambda k=key: b_plain.get("/v1/models", headers=k).status_code == 200)
                a.delete(f"/admin/api/keys/{made['id']}").raise_for_status()
                delays["key revocation"].append(
                    _until(lambda k=key: b_plain.get("/v1/models", headers=k).status_code == 401)
                )
    finally:
        a_proc.stop()
        b_proc.stop()
        upstream.stop()
    return delays


# -- part 2: the log ------------------------------------------------------------------------------


def _write(url: str, count: int, jitter_ms: float, committed: dict[int, float], seed: int) -> None:
    from compass.storage.fleet_log import emit

    rng = random.Random(seed)
    with psycopg.connect(url) as con:
        for _ in range(count):
            event_id = emit(con, "writer", "bench", {})
            time.sleep(rng.uniform(0, jitter_ms) / 1000)
            con.commit()
            committed[event_id] = time.time()


def _naive(url: str, stop: threading.Event, seen: dict[int, float]) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        watermark = 0
        while not stop.is_set():
            rows = con.execute(
                "SELECT id FROM fleet_events WHERE id > %s ORDER BY id", [watermark]
            ).fetchall()
            now = time.time()
            for (event_id,) in rows:
                seen.setdefault(event_id, now)
            watermark = max([watermark, *(r[0] for r in rows)])
            time.sleep(0.005)


async def log_followers(url: str, events: int, writers: int, jitter_ms: float) -> dict[str, Any]:
    from compass.storage.fleet_log import Position
    from compass.storage.follower import Follower

    with psycopg.connect(url, autocommit=True) as con:
        from compass.storage.pg_migrations import migrate

        migrate(con)
        con.execute("TRUNCATE fleet_events")
    seen: dict[str, dict[int, float]] = {"naive id > watermark (5 ms poll)": {}}
    applied: dict[str, int] = {}
    followers = []
    for name, listen in [("snapshot, 250 ms poll only", False), ("snapshot + LISTEN/NOTIFY", True)]:
        record: dict[int, float] = {}
        seen[name] = record
        follower = Follower(url, origin="bench", poll_s=0.25, listen=listen)

        async def handler(batch: list[Any], record: dict[int, float] = record, name: str = name) -> None:
            now = time.time()
            applied[name] = applied.get(name, 0) + len(batch)
            for event in batch:
                record.setdefault(event.id, now)

        follower.on("bench", handler)
        follower.start(Position())
        followers.append(follower)
    stop = threading.Event()
    naive = threading.Thread(target=_naive, args=(url, stop, seen["naive id > watermark (5 ms poll)"]))
    naive.start()
    committed: dict[int, float] = {}
    per_writer = events // writers
    await asyncio.gather(
        *(asyncio.to_thread(_write, url, per_writer, jitter_ms, committed, seed) for seed in range(writers))
    )
    await asyncio.sleep(1.0)  # every follower has polled at least twice since the last commit
    stop.set()
    naive.join()
    for follower in followers:
        await asyncio.to_thread(follower.stop)
    out: dict[str, Any] = {"events": len(committed)}
    for name, record in seen.items():
        delays = [(record[i] - t) * 1000 for i, t in committed.items() if i in record]
        out[name] = {
            "missed": sum(1 for i in committed if i not in record),
            "applied_twice": applied.get(name, len(record)) - len(record),
            "p50_ms": percentile(delays, 50),
            "p99_ms": percentile(delays, 99),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--skip-replicas", action="store_true", help="only part 2 (no gateways)")
    args = parser.parse_args()
    import tempfile

    cluster = None
    url = args.url
    if url is None:
        from tests.postgres import start_cluster  # the same throwaway cluster the fleet tests use

        cluster = start_cluster()
        cluster.psql("CREATE DATABASE bench_log")
        cluster.psql("CREATE DATABASE bench_fleet")
        url = cluster.url("bench_fleet")
    log_url = url if args.url else cluster.url("bench_log")  # type: ignore[union-attr]
    try:
        result: dict[str, Any] = {"args": vars(args)}
        log = asyncio.run(log_followers(log_url, args.events, args.writers, args.jitter_ms))
        result["log"] = log
        rows = [
            [name, log[name]["missed"], log[name]["applied_twice"], log[name]["p50_ms"], log[name]["p99_ms"]]
            for name in log
            if name != "events"
        ]
        print_table(
            f"the change log: {log['events']} events from {args.writers} writers,"
            f" commits 0-{args.jitter_ms:g} ms after the insert",
            ["follower", "missed", "applied twice", "commit→read p50 ms", "p99 ms"],
            rows,
        )
        if not args.skip_replicas:
            with tempfile.TemporaryDirectory(prefix="compass-fleet-bench-") as root:
                delays = replicas(url, Path(root), args.trials)
            result["replicas"] = {
                k: {"p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000, "n": len(v)}
                for k, v in delays.items()
            }
            print_table(
                f"propagation between two replicas ({args.trials} changes each)",
                ["change", "p50 ms", "p99 ms", "max ms"],
                [
                    [k, percentile(v, 50) * 1000, percentile(v, 99) * 1000, max(v) * 1000]
                    for k, v in delays.items()
                ],
            )
        print(f"wrote {write_json('fleet_propagation', result)}")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
