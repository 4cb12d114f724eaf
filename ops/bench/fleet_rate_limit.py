"""The fleet rate limit's cost: ``compass_take_token`` round trips on one throwaway PostgreSQL 15.

Side by side in one run: the in-memory bucket (embedded mode) and the PostgreSQL bucket, from 1
and 4 connections (replicas) taking from the same key, and from 4 connections on 4 keys.

    python -m ops.bench.fleet_rate_limit [--takes 3000]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from compass.storage.pg_migrations import migrate
from compass.storage.postgres import connect
from compass.storage.rate_limits import TokenBucket, take_token
from ops.bench.common import percentile, write_json


def run(url: str, connections: int, keys: int, takes: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(c: int) -> None:
        con = connect(url)
        mine = []
        for i in range(takes // connections):
            start = time.perf_counter()
            take_token(con, f"bench-{(c + i) % keys}", 1e9)
            mine.append((time.perf_counter() - start) * 1000)
        con.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "takes_per_s": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--takes", type=int, default=3000)
    args = parser.parse_args()
    from tests.postgres import start_cluster

    bucket = TokenBucket(1e9)
    start = time.perf_counter()
    for _ in range(args.takes):
        bucket.take()
    result: dict[str, Any] = {"memory_take_us": (time.perf_counter() - start) / args.takes * 1e6}
    cluster = start_cluster()
    try:
        con = connect(cluster.url())
        migrate(con)
        con.close()
        for name, connections, keys in (
            ("1 conn, 1 key", 1, 1),
            ("4 conns, 1 key", 4, 1),
            ("4 conns, 4 keys", 4, 4),
        ):
            result[name] = run(cluster.url(), connections, keys, args.takes)
            print(name, result[name], flush=True)
    finally:
        cluster.stop()
    write_json("fleet_rate_limit", result)


if __name__ == "__main__":
    main()
