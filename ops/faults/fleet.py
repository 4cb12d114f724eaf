"""Fleet-mode faults: PostgreSQL restarting under load, kill -9 of replicas, bad configuration.

``python -m ops.faults.fleet`` runs, each on its own throwaway PostgreSQL 15 cluster
(tests/postgres.py) with real ``compass serve`` processes and a fake upstream:

* ``pg_restart``: clients load one replica; PostgreSQL stops (``pg_ctl -m fast``) for a while
  and starts again. Counts requests served while it was down, rows spooled, the time from its
  start to ``/health`` ok, and acknowledged rows missing from the store afterwards.
* ``pg_down_kill9``: the same outage, but the replica is killed (SIGKILL) while PostgreSQL is
  down; PostgreSQL comes back and the replica is started again on the same home.
* ``spool_full``: a long outage with a small spool: new requests get a 503 once it is full,
  are served again once PostgreSQL is back, and no acknowledged row is dropped.
* ``nginx_kill9``: two replicas behind nginx (``proxy_next_upstream``), one killed mid-load.
  Counts client failures and the killed replica's acknowledged rows found in the store, right
  after the kill and after that replica's next start (which writes its journal).
* ``pg_down_feedback`` / ``pg_down_feedback_kill9``: feedback during the outage, two replicas,
  the second with A killed while PostgreSQL is down (ops/faults/fleet_feedback.py).
* ``bad_config``: ``compass serve`` with an unreachable port, an unknown host, a wrong password,
  a missing database, a server that is not PostgreSQL and one that never answers.

Prints one line per check, writes ops/bench/results/fleet-faults.json, exits 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ops.faults import fleet_feedback
from ops.faults.harness import env_offline, gateway_config
from ops.faults.load import HealthWatch, Load, store_ids
from ops.faults.nginx import Nginx
from ops.ports import free_port
from ops.procs import REPO, GatewayProcess


def _cluster() -> Any:
    from tests.postgres import start_cluster  # the same throwaway cluster as the test suite's

    return start_cluster()


def fleet_config(upstream_url: str, url: str, **storage: Any) -> dict[str, Any]:
    return gateway_config(upstream_url, storage={"url": url, "flush_interval_ms": 50, **storage})


def spool_lines(home: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (home / "spool").rglob("*.jsonl"))


def outage(cluster: Any, before_s: float, down_s: float, after_s: float) -> tuple[float, float]:
    """Under the running load: PostgreSQL stopped for ``down_s``, then started; ``(down_at, up_at)``."""
    time.sleep(before_s)
    down_at = time.monotonic()
    cluster.stop_server("fast")
    time.sleep(down_s)
    up_at = time.monotonic()
    cluster.start_server()
    time.sleep(after_s)
    return down_at, up_at


def pg_restart(
    upstream_url: str, work: Path, clients: int = 8, phases: tuple[float, ...] = (3, 5, 4)
) -> dict[str, Any]:
    """Load through a PostgreSQL stop and start; ``phases``: seconds before, down, after."""
    before_s, down_s, after_s = phases
    cluster = _cluster()
    gateway = GatewayProcess(work / "replica", fleet_config(upstream_url, cluster.url()), env=env_offline())
    try:
        gateway.start()
        with HealthWatch(gateway.url) as watch, Load([gateway.url], clients, stream_share=0.25) as load:
            down_at, up_at = outage(cluster, before_s, down_s, after_s)
        healthy_after_s = watch.ok_after(up_at)
        gateway.stop()
        stored = store_ids(cluster.url())
    finally:
        gateway.stop()
        cluster.stop()
    acked = load.acked()
    during = [r for r in load.results if r.ok and down_at <= r.started < up_at]
    return {
        "clients": clients,
        "phases_s": list(phases),
        "requests": len(load.results),
        "ok": sum(r.ok for r in load.results),
        "failed": sum(not r.ok for r in load.results),
        "streams_ok": sum(r.ok and r.stream for r in load.results),
        "served_while_down": len(during),
        "degraded_seen": watch.saw("degraded"),
        "max_rows_waiting": watch.max_waiting,
        "spooled": watch.last_spool.get("spooled"),
        "replayed": watch.last_spool.get("replayed"),
        "seconds_to_ok_after_pg_start": healthy_after_s,
        "rows_in_store": len(stored),
        "acked": len(acked),
        "acked_missing": len(acked - stored),
    }


def pg_down_kill9(
    upstream_url: str, work: Path, clients: int = 8, phases: tuple[float, ...] = (2, 3)
) -> dict[str, Any]:
    """PostgreSQL stops; the replica is killed while it is down; both come back."""
    before_s, down_s = phases
    cluster = _cluster()
    home = work / "killed"
    config = fleet_config(upstream_url, cluster.url())
    gateway = GatewayProcess(home, config, env=env_offline())
    try:
        gateway.start()
        with Load([gateway.url], clients) as load:
            time.sleep(before_s)
            down_at = time.monotonic()
            cluster.stop_server("fast")
            time.sleep(down_s)
            gateway.kill()
        on_disk = spool_lines(home)
        cluster.start_server()
        started = time.monotonic()
        again = GatewayProcess(home, config, env=env_offline()).start()
        restart_s = time.monotonic() - started
        again.stop()
        stored = store_ids(cluster.url())
    finally:
        gateway.stop()
        cluster.stop()
    acked = load.acked()
    while_down = {r.request_id for r in load.results if r.ok and r.started >= down_at}
    return {
        "clients": clients,
        "acked": len(acked),
        "acked_while_down": len(while_down),
        "spool_lines_after_kill": on_disk,
        "restart_s": round(restart_s, 2),
        "rows_in_store": len(stored),
        "acked_missing": len(acked - stored),
        "spool_left": spool_lines(home),
    }


def nginx_kill9(
    upstream_url: str, work: Path, clients: int = 8, phases: tuple[float, ...] = (4, 4)
) -> dict[str, Any]:
    """Two replicas behind nginx; one is killed after ``phases[0]`` s, the load goes on ``phases[1]`` s."""
    before_s, after_s = phases
    cluster = _cluster()
    config = fleet_config(upstream_url, cluster.url())
    replicas = [GatewayProcess(work / name, config, env=env_offline()) for name in ("a", "b")]
    proxy = None
    try:
        for replica in replicas:
            replica.start()
        proxy = Nginx([f"127.0.0.1:{r.port}" for r in replicas]).start()
        killed = f"127.0.0.1:{replicas[0].port}"
        with Load([proxy.url], clients) as load:
            time.sleep(before_s)
            kill_at = time.monotonic()
            replicas[0].kill()
            time.sleep(after_s)
        in_store_at_once = store_ids(cluster.url())
        again = GatewayProcess(work / "a", config, env=env_offline()).start()  # writes its journal
        again.stop()
        replicas[1].stop()
        stored = store_ids(cluster.url())
    finally:
        if proxy is not None:
            proxy.stop()
        for replica in replicas:
            replica.stop()
        cluster.stop()
    by_killed = {r.request_id for r in load.results if r.ok and r.upstream == killed}
    acked = load.acked()
    return {
        "clients": clients,
        "requests": len(load.results),
        "client_failures": sum(not r.ok for r in load.results),
        "failures": [r.error for r in load.results if not r.ok][:5],
        "requests_after_kill": sum(r.started >= kill_at for r in load.results),
        "retried_by_nginx": sum("," in (r.upstream_all or "") for r in load.results),
        "acked_by_killed": len(by_killed),
        "killed_acked_in_store_at_once": len(by_killed & in_store_at_once),
        "killed_acked_in_store_after_its_restart": len(by_killed & stored),
        "acked": len(acked),
        "acked_missing": len(acked - stored),
    }


def spool_full(
    upstream_url: str, work: Path, clients: int = 8, phases: tuple[float, ...] = (1, 6, 3)
) -> dict[str, Any]:
    """A small spool (``spool_max_mb: 0.5``) fills during a long outage: 503s, no row dropped."""
    before_s, down_s, after_s = phases
    cluster = _cluster()
    config = fleet_config(upstream_url, cluster.url(), spool_max_mb=0.5)
    gateway = GatewayProcess(work / "replica", config, env=env_offline())
    try:
        gateway.start()
        with HealthWatch(gateway.url) as watch, Load([gateway.url], clients) as load:
            down_at, up_at = outage(cluster, before_s, down_s, after_s)
        gateway.stop()
        stored = store_ids(cluster.url())
    finally:
        gateway.stop()
        cluster.stop()
    refused = [r for r in load.results if not r.ok]
    full = [r for r in refused if r.status == 503 and "spool_full" in (r.error or "")]
    acked = load.acked()
    return {
        "clients": clients,
        "phases_s": list(phases),
        "spool_max_bytes": watch.last_spool.get("max_bytes"),
        "requests": len(load.results),
        "served_while_down": sum(r.ok and down_at <= r.started < up_at for r in load.results),
        "refused": len(refused),
        "refused_spool_full_503": len(full),
        "served_after_recovery": sum(r.ok and r.started >= up_at for r in load.results),
        "acked": len(acked),
        "acked_missing": len(acked - stored),
    }


class _Silent:
    """A TCP port that accepts and never answers: a firewall's black hole, a hung server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]


def bad_config(upstream_url: str, work: Path, timeout_s: float = 2.0) -> dict[str, Any]:
    """Each bad ``storage.url`` must end ``compass serve`` quickly with the problem named."""
    cluster = _cluster()
    silent = _Silent()
    http_port = int(upstream_url.split(":")[2].split("/")[0])
    cases = {
        "unreachable port": (f"postgresql://compass:pw@127.0.0.1:{free_port()}/compass", "cannot reach"),
        "unknown host": ("postgresql://compass:pw@no-such-host.invalid:5432/compass", "cannot reach"),
        "wrong password": (cluster.url(password="wrong-secret"), "refused the user name or password"),
        "missing database": (cluster.url("no_such_db"), "database does not exist"),
        "not PostgreSQL": (f"postgresql://compass:pw@127.0.0.1:{http_port}/compass", "not PostgreSQL"),
        "no answer": (f"postgresql://compass:pw@127.0.0.1:{silent.port}/compass", "connect_timeout_s"),
    }
    results = {}
    try:
        for name, (url, phrase) in cases.items():
            home = Path(tempfile.mkdtemp(prefix="compass-badcfg-", dir=work))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("COMPASS")},
                **env_offline(),
                "COMPASS_HOME": str(home),
                "COMPASS_DATABASE_URL": url,
                "COMPASS_CLASSIFIER": "length",
                "COMPASS_CACHE": "false",
                "COMPASS_PORT": str(free_port()),
            }
            config = home / "compass.yaml"
            config.write_text(f"storage:\n  connect_timeout_s: {timeout_s}\n", encoding="utf-8")
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "compass", "serve", "--config", str(config)],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                output, code = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired:
                output, code = "hung for 60 s", None
            line = next((x for x in output.splitlines() if "storage.url" in x), output.strip()[-300:])
            results[name] = {
                "exit_code": code,
                "seconds": round(time.monotonic() - started, 2),
                "named": phrase in output,
                "secret_hidden": "wrong-secret" not in output and ":pw@" not in output,
                "message": line.strip()[:300],
            }
    finally:
        silent.sock.close()
        cluster.stop()
    return results


def verdicts(name: str, figures: dict[str, Any]) -> list[tuple[bool, str]]:
    """``(passed, line)`` per check of one scenario's figures."""
    f = figures
    if name.startswith("pg_down_feedback"):
        return fleet_feedback.verdicts(figures)
    if name == "pg_restart":
        stored = f"{f['acked'] - f['acked_missing']}/{f['acked']}"
        return [
            (
                f["failed"] == 0 and f["served_while_down"] > 0,
                f"served {f['served_while_down']} requests while PostgreSQL was down;"
                f" {f['failed']} of {f['requests']} failed",
            ),
            (
                f["degraded_seen"] and f["max_rows_waiting"] > 0,
                f"/health degraded, up to {f['max_rows_waiting']} rows waiting on disk",
            ),
            (
                f["seconds_to_ok_after_pg_start"] is not None,
                f"/health ok {f['seconds_to_ok_after_pg_start']} s after PostgreSQL started",
            ),
            (f["acked_missing"] == 0, f"acknowledged rows in the store: {stored}"),
        ]
    if name == "pg_down_kill9":
        stored = f"{f['acked'] - f['acked_missing']}/{f['acked']}"
        return [
            (
                f["spool_lines_after_kill"] > 0,
                f"{f['spool_lines_after_kill']} lines in the spool after kill -9 (PostgreSQL down)",
            ),
            (
                f["acked_missing"] == 0 and f["spool_left"] == 0,
                f"after the restart: acknowledged rows in the store {stored}"
                f" ({f['acked_while_down']} acked while down); spool left {f['spool_left']}",
            ),
        ]
    if name == "spool_full":
        return [
            (
                f["refused"] > 0 and f["refused"] == f["refused_spool_full_503"],
                f"spool of {f['spool_max_bytes']} bytes: {f['served_while_down']} served while down, then"
                f" {f['refused_spool_full_503']} refused with 503 spool_full (of {f['refused']} failures)",
            ),
            (
                f["served_after_recovery"] > 0,
                f"{f['served_after_recovery']} served after PostgreSQL returned",
            ),
            (
                f["acked_missing"] == 0,
                f"acknowledged rows in the store: {f['acked'] - f['acked_missing']}/{f['acked']}",
            ),
        ]
    if name == "nginx_kill9":
        killed = f["acked_by_killed"]
        return [
            (
                f["client_failures"] == 0,
                f"client failures {f['client_failures']} of {f['requests']}"
                f" ({f['requests_after_kill']} after the kill, {f['retried_by_nginx']} retried by nginx)",
            ),
            (
                f["killed_acked_in_store_after_its_restart"] == killed,
                f"killed replica's acked rows in the store: {f['killed_acked_in_store_at_once']}/{killed}"
                f" at once, {f['killed_acked_in_store_after_its_restart']}/{killed} after its restart",
            ),
            (
                f["acked_missing"] == 0,
                f"all acknowledged rows in the store: {f['acked'] - f['acked_missing']}/{f['acked']}",
            ),
        ]
    return [
        (
            r["exit_code"] not in (0, None) and r["named"] and r["secret_hidden"] and r["seconds"] < 30,
            f"{case}: exit {r['exit_code']} in {r['seconds']} s: {r['message']}",
        )
        for case, r in figures.items()
    ]


SCENARIOS = {
    "pg_restart": pg_restart,
    "pg_down_kill9": pg_down_kill9,
    "spool_full": spool_full,
    "nginx_kill9": nginx_kill9,
    "pg_down_feedback": fleet_feedback.pg_down_feedback,
    "pg_down_feedback_kill9": fleet_feedback.pg_down_feedback_kill9,
}


def main(argv: list[str] | None = None) -> int:
    from ops.bench.common import write_json
    from ops.fake_upstream import FakeModelBehaviour, FakeUpstream, FakeUpstreamConfig
    from ops.faults.harness import POOL_SHAPE

    parser = argparse.ArgumentParser(prog="python -m ops.faults.fleet", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default="pg_restart,pg_down_kill9,spool_full,nginx_kill9,pg_down_feedback,pg_down_feedback_kill9,bad_config",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake upstream's latency")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every phase's length")
    parser.add_argument("--out", default="fleet-faults")
    args = parser.parse_args(argv)
    behaviour = FakeModelBehaviour(latency_ms=args.latency_ms, tokens_per_s=1000.0, completion_tokens=24)
    upstream = FakeUpstream(FakeUpstreamConfig(models={n: behaviour for n in POOL_SHAPE})).start()
    work = Path(tempfile.mkdtemp(prefix="compass-fleet-faults-"))
    phases = {
        "pg_restart": (3, 5, 4),
        "pg_down_kill9": (2, 3),
        "spool_full": (1, 6, 3),
        "nginx_kill9": (4, 4),
        "pg_down_feedback": (3, 4),
        "pg_down_feedback_kill9": (3, 4),
    }
    runs, passed = [], True
    try:
        for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            print(f"--- {name}", flush=True)
            if name == "bad_config":
                figures = bad_config(upstream.url, work)
            else:
                scaled = tuple(p * args.scale for p in phases[name])
                figures = SCENARIOS[name](upstream.url, work / name, args.clients, scaled)
            checks = verdicts(name, figures)
            for ok, line in checks:
                print(f"{'PASS' if ok else 'FAIL'}  {line}", flush=True)
            passed &= all(ok for ok, _ in checks)
            runs.append({"scenario": name, "figures": figures, "passed": all(ok for ok, _ in checks)})
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        print(f"wrote {write_json(args.out, {'clients': args.clients, 'passed': passed, 'runs': runs})}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
