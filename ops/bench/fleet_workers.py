"""1 against 2 gateway workers on one machine, with the CPU of every process in the run accounted.

On a 2-core machine a second worker can only add throughput if the load client, the fake
upstream and PostgreSQL leave it a core: with ``g`` the gateway's CPU per request and ``o``
everything else's, 2 workers reach at most ``2 / (g + o)`` req/s against ``1 / g`` for one, a
ratio of ``2g / (g + o)``. So each cell reports, per request, the CPU of the gateway (each
worker), the upstream, PostgreSQL, the client and what the machine spent outside them, and how
the workers split the client's keep-alive connections. Setups, side by side in one run:

* ``wrk+nginx``: wrk (C) posting, nginx answering one static chat.completion
  (``ops.bench.static_upstream``): the cheapest "everything else" this machine has;
* ``wrk+python``: wrk against the Python fake upstream (``ops.fake_upstream``);
* ``aiohttp+python``: the one-process aiohttp client of ``ops.bench.common`` (in a child
  process, so its CPU is counted) against the Python fake upstream, as ``fleet_serve`` runs it.

For each Layer 1 setting (``length`` = off, ``embedding`` = on) and setup, a 1-worker and a
2-worker gateway run on one throwaway PostgreSQL 15 (``fsync=off``), cache off, the direct
aiohttp path to the upstream for both, and rounds alternate 1, 2, 1, 2, ...

    python -m ops.bench.fleet_workers [--seconds 8] [--rounds 3] [--connections 64]

Priority: where ``kernel.sched_autogroup_enabled`` is 1 (this machine), ``nice`` orders processes
only inside one session, so other sessions' ``nice -n 19`` jobs still take an equal share per
session. To give the benchmark the share a nice-0 job has over nice-19 ones, raise its session
instead (as root): ``echo -19 > /proc/self/autogroup`` in the shell that starts it (68:1, the
weight ratio of nice 0 to nice 19). The run gives PostgreSQL's session (``pg_ctl`` starts one)
the same value, and records both. ``machine_ceiling`` (2 / 1 processes of pure Python) shows
what 2 cores gave in that run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ops.bench import cpu, wrk
from ops.bench.common import load, write_json
from ops.bench.fleet_serve import AUTH, MODELS, body, config
from ops.bench.static_upstream import StaticUpstream
from ops.bench.vs_litellm import BENCH_KEY, QUIET_ENV
from ops.fake_upstream import instant_config, spawn_fake_upstream
from ops.procs import GatewayProcess

SETUPS = ("wrk+nginx", "wrk+python", "aiohttp+python")


def log(message: str) -> None:
    print(f"[fleet_workers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def worker_pids(gateway: GatewayProcess) -> list[int]:
    """The serving processes: the supervisor's spawned children, or the one process itself."""
    assert gateway.process is not None
    root = gateway.process.pid
    out = []
    for pid in cpu.process_tree(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid != root and b"spawn_main" in cmd:
            out.append(pid)
    return out or [root]


def aiohttp_client(url: str, seconds: float, connections: int, offset: int) -> dict[str, Any]:
    """The aiohttp client in a child process, bounded by time; its figures and CPU seconds."""
    argv = [sys.executable, "-m", "ops.bench.fleet_workers", "--aiohttp-client", url]
    argv += ["--seconds", str(seconds), "--connections", str(connections), "--offset", str(offset)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert process.stdout is not None
    text = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"aiohttp client exited with {process.returncode}: {text[-2000:]}")
    return {**json.loads(text.strip().splitlines()[-1]), "cpu_s": usage.ru_utime + usage.ru_stime}


def client_main(url: str, seconds: float, connections: int, offset: int) -> None:
    result = asyncio.run(
        load(url, lambda i: body(offset + i, "auto"), connections, 10**9, False, AUTH, max_seconds=seconds)
    )
    print(json.dumps(result), flush=True)


def spin(seconds: float) -> int:
    """Pure-Python work for ``seconds``: loop iterations done (the machine's ceiling, not the gateway's)."""
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1
    return n


def machine_ceiling(seconds: float = 3.0) -> float:
    """Work of 2 processes at once over 1 alone: what 2 cores of this machine give CPU-bound Python."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(spin, [0.2, 0.2])  # both started
        one = pool.apply(spin, (seconds,))
        two = sum(pool.map(spin, [seconds, seconds], chunksize=1))
    return two / one


class Cell:
    """One measured run of one client against one gateway, with the CPU of every group."""

    def __init__(self, gateway: GatewayProcess, upstream_pid: int, pg_pid: int) -> None:
        self.gateway = gateway
        self.workers = worker_pids(gateway)
        self.upstream_pid, self.pg_pid = upstream_pid, pg_pid

    def groups(self) -> dict[str, list[int]]:
        """The processes of each group now (PostgreSQL's backends come and go)."""
        assert self.gateway.process is not None
        return {
            "supervisor": [p for p in cpu.process_tree(self.gateway.process.pid) if p not in self.workers],
            "upstream": cpu.process_tree(self.upstream_pid),
            "postgres": cpu.process_tree(self.pg_pid),
            **{f"worker{i}": [p] for i, p in enumerate(self.workers)},
        }

    def run(self, client: str, seconds: float, connections: int, offset: int) -> dict[str, Any]:
        url = f"{self.gateway.url}/v1/chat/completions"
        seen: dict[int, int] = {}

        def sample() -> None:  # how the listening socket spread the connections, mid-run
            time.sleep(seconds / 2)
            seen.update(cpu.connections_per_pid(self.gateway.port, self.workers))

        sampler = threading.Thread(target=sample, daemon=True)
        loops_before = [cpu.cpu_seconds(p, p) for p in self.workers]  # each worker's main thread
        before = cpu.snapshot(self.groups())
        sampler.start()
        if client == "wrk":
            figures = wrk.run(url, "auto", seconds, connections, bearer=BENCH_KEY, offset=offset)
        else:
            figures = aiohttp_client(url, seconds, connections, offset)
        used = cpu.delta(before, cpu.snapshot(self.groups()))
        loops = sum(cpu.cpu_seconds(p, p) - b for p, b in zip(self.workers, loops_before, strict=True))
        sampler.join()
        used["client"] = figures.pop("cpu_s")
        n = max(1, figures["n"])
        gateway = sum(v for k, v in used.items() if k.startswith("worker")) + used["supervisor"]
        others = used["client"] + used["upstream"] + used["postgres"]
        split = {k: 1000 * v / n for k, v in used.items() if k != "machine"}
        split["gateway"] = 1000 * gateway / n
        split["gateway_event_loops"] = 1000 * loops / n  # the rest of "gateway": other threads
        split["unattributed"] = 1000 * (used["machine"] - gateway - others) / n
        return {
            **figures,
            "cpu_ms_per_request": split,
            "o_over_g": others / gateway if gateway else float("nan"),
            "machine_busy_cores": used["machine"] / figures.get("seconds", seconds),
            "connections_per_worker": [seen.get(p, 0) for p in self.workers],
            "worker_cpu_share": [used[f"worker{i}"] / gateway for i in range(len(self.workers))],
        }


def gateway_for(scratch: Path, name: str, upstream_url: str, classifier: str, pg: str, workers: int):
    gateway = GatewayProcess(
        scratch / name, config(upstream_url, classifier, pg), env=QUIET_ENV, args=["--workers", str(workers)]
    )
    gateway.start(timeout_s=240)
    backend = httpx.get(f"{gateway.url}/health", timeout=10).json()["layers"]["classifier"].get("backend")
    if backend != classifier:
        gateway.stop()
        raise RuntimeError(f"asked for classifier {classifier!r}, the gateway runs {backend!r}")
    return gateway


def summarize_pair(cells: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median req/s per worker count and the 2/1 ratio, with the per-round ratios' range."""
    rps = {w: [c["rps"] for c in cells[w]] for w in cells}
    per_round = [b / a for a, b in zip(rps[1], rps[2], strict=False) if a > 0]
    return {
        "rps_1": statistics.median(rps[1]),
        "rps_2": statistics.median(rps[2]),
        "ratio": statistics.median(rps[2]) / statistics.median(rps[1]),
        "ratio_min": min(per_round),
        "ratio_max": max(per_round),
        "rounds_rps_1": rps[1],
        "rounds_rps_2": rps[2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--classifiers", default="length,embedding")
    parser.add_argument("--aiohttp-client", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aiohttp_client:
        client_main(args.aiohttp_client, args.seconds, args.connections, args.offset)
        return
    from tests.postgres import start_cluster

    setups = [s for s in args.setups.split(",") if s]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {SETUPS}")
    load_before = os.getloadavg()
    cluster = start_cluster()
    pg_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    results_priority = {"autogroup_nice": cpu.autogroup_nice(), "postgres_same": cpu.share_priority(pg_pid)}
    log(f"scheduler autogroup nice {results_priority}")
    python_up = spawn_fake_upstream(instant_config(*MODELS), port=0)
    nginx_up = StaticUpstream().start()
    assert nginx_up.process is not None
    upstreams = {
        "python": (python_up.url, python_up.process.pid),
        "nginx": (f"{nginx_up.url}/v1", nginx_up.process.pid),
    }
    results: dict[str, Any] = {"args": vars(args), "load_before": load_before, "pairs": []}
    results["priority"] = results_priority
    results["machine_ceiling"] = machine_ceiling()
    log(f"2 processes of pure Python do {results['machine_ceiling']:.2f}x the work of 1 on this machine")
    offset = 0
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for classifier in args.classifiers.split(","):
                for setup in setups:
                    client, upstream = setup.split("+")
                    up_url, up_pid = upstreams[upstream]
                    gateways = {
                        w: gateway_for(Path(scratch), f"{classifier}-{setup}-{w}", up_url, classifier,
                                       cluster.url(), w)
                        for w in (1, 2)
                    }  # fmt: skip
                    try:
                        cells: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
                        for g in gateways.values():  # warm-up: connections, JIT of the first paths
                            Cell(g, up_pid, pg_pid).run(client, 2, args.connections, offset)
                            offset += 10_000_000
                        for r in range(args.rounds):
                            for w, g in gateways.items():
                                cell = Cell(g, up_pid, pg_pid).run(
                                    client, args.seconds, args.connections, offset
                                )
                                offset += 10_000_000
                                cells[w].append(cell)
                                split = cell["cpu_ms_per_request"]
                                log(
                                    f"{classifier} {setup} round {r} workers={w}: {cell['rps']:.0f} req/s,"
                                    f" errors {cell['errors']}, conns {cell['connections_per_worker']},"
                                    f" cpu ms/req gw {split['gateway']:.3f}"
                                    f" (loops {split['gateway_event_loops']:.3f})"
                                    f" up {split['upstream']:.3f}"
                                    f" pg {split['postgres']:.3f} client {split['client']:.3f}"
                                    f" unattr {split['unattributed']:.3f}; o/g {cell['o_over_g']:.2f}"
                                )
                    finally:
                        for g in gateways.values():
                            g.stop()
                    pair = {"classifier": classifier, "setup": setup, **summarize_pair(cells), "cells": cells}
                    results["pairs"].append(pair)
                    log(
                        f"== {classifier} {setup}: {pair['rps_1']:.0f} -> {pair['rps_2']:.0f} req/s,"
                        f" {pair['ratio']:.2f}x ({pair['ratio_min']:.2f}-{pair['ratio_max']:.2f})"
                    )
    finally:
        nginx_up.stop()
        python_up.terminate()
        cluster.stop()
    results["load_after"] = os.getloadavg()
    write_json("fleet_workers", results)
    print_summary(results)


def print_summary(results: dict[str, Any]) -> None:
    """Per pair: the 2/1 ratio; per cell kind: medians of req/s, CPU ms per request, connections."""
    med = statistics.median
    print(
        "| Layer 1 | setup | workers | req/s | 2/1 (per-round range) | CPU ms/req: gateway (event loops)"
        " / upstream / PG / client / unattributed | o/g | connections per worker |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in results["pairs"]:
        for w in (1, 2):
            cells = p["cells"][w]

            def m(key: str, cells: list[dict[str, Any]] = cells) -> float:
                return med([c["cpu_ms_per_request"][key] for c in cells])

            ratio = f"{p['ratio']:.2f}x ({p['ratio_min']:.2f}-{p['ratio_max']:.2f})" if w == 2 else ""
            split = f"{m('gateway'):.3f} ({m('gateway_event_loops'):.3f})" + "".join(
                f" / {m(k):.3f}" for k in ("upstream", "postgres", "client", "unattributed")
            )
            rps, o_g = med([c["rps"] for c in cells]), med([c["o_over_g"] for c in cells])
            print(
                f"| {p['classifier']} | {p['setup']} | {w} | {rps:.0f} | {ratio} | {split} | {o_g:.2f}"
                f" | {cells[-1]['connections_per_worker']} |"
            )
    print(f"machine ceiling (2 / 1 processes of pure Python): {results['machine_ceiling']:.2f}x")
    print(f"load average before {results['load_before']}, after {results['load_after']}")


if __name__ == "__main__":
    main()
