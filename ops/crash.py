"""``python -m ops.crash``: kill -9 the gateway under load, restart it, and check what survived.

Phase 1 loads the gateway and sends ``/feedback`` (graded by the fake upstream) so Layer 2 and the
cache have state; then the bandit posteriors and cache stats are read. Phase 2 loads it again, and
the process is SIGKILLed mid-load. After a restart on the same home:

* every request whose client got a 2xx (a JSON body, or a stream that reached ``[DONE]``) has its
  history row: all of them under ``storage.durability: strict``; under ``batched`` the missing ones
  must have been answered within one flush interval (+ a write margin) of the kill;
* the DuckDB file opens cleanly (the restarted server runs, and after a clean stop the file opens
  read-only in a fresh connection);
* the bandit posteriors rebuilt from the ``rewards`` table equal the ones served before the kill;
* the cache has at least the entries it had before (skipped, with a message, if Layer 3 is off).

Prints PASS/FAIL per check and exits 1 on any failure.

``--after N`` runs the short form instead (``kill_after_acks``): N requests, killed the instant
the N-th is acknowledged, then the file itself is opened and every acknowledged id looked up.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ops.fake_upstream import spawn_fake_upstream
from ops.faults.client import Reply, chat, fake_root, grade_and_feedback, make_request
from ops.faults.harness import Verdict, env_offline, gateway_config, home_dir, realistic_config
from ops.procs import GatewayProcess


@dataclass
class CrashOptions:
    durability: str = "journal"
    clients: int = 16
    warm_s: float = 8.0  # phase 1: load + feedback
    load_s: float = 6.0  # phase 2: load, killed somewhere in its middle
    flush_interval_ms: float = 50.0
    margin_ms: float = 250.0  # time to write one batch, on a shared machine
    full_layers: bool = True  # MiniLM classifier and the cache, as a default install runs
    speedup: float = 4.0
    seed: int = 5


async def load(
    url: str, upstream_url: str, options: CrashOptions, seconds: float, feedback: bool, kill: Any = None
) -> tuple[list[Reply], float | None]:
    """Clients until ``seconds`` pass (or the server dies); ``kill`` is called mid-way if given."""
    import aiohttp

    replies: list[Reply] = []
    deadline = time.monotonic() + seconds
    killed_at: list[float] = []

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(options.seed * 100 + index + (1000 if kill else 0))
        while time.monotonic() < deadline and not killed_at:
            prompt, extra = make_request(rng, 0.4)
            reply = await chat(session, url, prompt, rng.random() < 0.5, timeout_s=30, **extra)
            replies.append(reply)
            if feedback and reply.ok and rng.random() < 0.5:
                await grade_and_feedback(session, fake_root(upstream_url), url, reply)

    async def killer() -> None:
        rng = random.Random(options.seed)
        await asyncio.sleep(rng.uniform(0.3, 0.7) * seconds)
        killed_at.append(time.monotonic())
        await asyncio.to_thread(kill)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=options.clients * 2)) as session:
        tasks = [client(i, session) for i in range(options.clients)]
        await asyncio.gather(*tasks, *([killer()] if kill else []))
    return replies, (killed_at[0] if killed_at else None)


def posteriors(snapshot: dict[str, Any]) -> dict[tuple[str, str], tuple[float, float, int]]:
    return {
        (context, model): (values["alpha"], values["beta"], values["pulls"])
        for context, models in snapshot.get("contexts", {}).items()
        for model, values in models.items()
    }


def rows_for(gateway: GatewayProcess, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        quoted = ", ".join(f"'{i}'" for i in ids[start : start + 500])
        found |= {r[0] for r in gateway.sql(f"SELECT id FROM requests WHERE id IN ({quoted})")}
    return found


def cache_entries(stats: dict[str, Any]) -> int | None:
    for key in ("entries", "size", "count"):
        if isinstance(stats.get(key), int):
            return stats[key]
    return None


def check_history(acked: list[Reply], found: set[str], killed_at: float, options: CrashOptions) -> Verdict:
    missing = [r for r in acked if r.request_id not in found]
    ages_ms = [(killed_at - r.finished_at) * 1000 for r in missing]
    bound_ms = options.flush_interval_ms + options.margin_ms
    figures = {"acked": len(acked), "missing": len(missing), "max_missing_age_ms": max(ages_ms, default=0.0)}
    if options.durability in ("strict", "journal"):
        return Verdict(
            f"every 2xx is in the history ({options.durability})",
            not missing,
            f"{len(acked) - len(missing)}/{len(acked)} acknowledged requests have their row",
            figures,
        )
    return Verdict(
        "what is missing is within one flush interval (batched)",
        all(age <= bound_ms for age in ages_ms),
        f"{len(missing)} of {len(acked)} acknowledged requests missing, answered at most"
        f" {max(ages_ms, default=0.0):.0f} ms before the kill (bound {bound_ms:.0f} ms ="
        f" flush {options.flush_interval_ms:.0f} + write margin {options.margin_ms:.0f})",
        figures,
    )


def check_bandit(before: dict[str, Any], after: dict[str, Any]) -> Verdict:
    old, new = posteriors(before), posteriors(after)
    differ = [
        key
        for key in old.keys() | new.keys()
        if key not in old
        or key not in new
        or old[key][2] != new[key][2]
        or not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(old[key][:2], new[key][:2], strict=True))
    ]
    pulls = sum(v[2] for v in old.values())
    return Verdict(
        "bandit posteriors rebuilt exactly",
        bool(old) and not differ,
        f"{len(old)} (context, model) posteriors over {pulls} pulls; {len(differ)} differ {differ[:3]}",
        {"pulls": pulls},
    )


def check_cache(before: dict[str, Any], after: dict[str, Any], problems: dict[str, Any]) -> Verdict:
    n_before, n_after = cache_entries(before), cache_entries(after)
    if not before.get("enabled", True) or "cache" in problems or n_before is None:
        reason = problems.get("cache") or "no entry count in /admin/api/cache"
        return Verdict(
            "cache entries reload", True, f"skipped: Layer 3 is not running ({reason})", skipped=True
        )
    return Verdict(
        "cache entries reload",
        n_after is not None and n_after >= n_before,
        f"{n_before} entries before the kill, {n_after} after the restart",
    )


def check_file(database: Path) -> Verdict:
    import duckdb

    try:
        with duckdb.connect(str(database), read_only=True) as con:
            requests = con.execute("SELECT count(*) FROM requests").fetchone()[0]
            rewards = con.execute("SELECT count(*) FROM rewards").fetchone()[0]
    except Exception as exc:
        return Verdict("DuckDB file opens cleanly", False, f"{type(exc).__name__}: {exc}")
    return Verdict("DuckDB file opens cleanly", True, f"{requests} request rows, {rewards} reward rows")


async def acknowledge(url: str, n: int, concurrency: int, on_nth: Any) -> list[str]:
    """Ids of the first ``n`` 2xx replies (odd ones streamed); ``on_nth()`` runs the moment the
    ``n``-th arrives, on the event loop, so no other reply is read before it."""
    import aiohttp

    acked: list[str] = []

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(index)
        sent = 0
        while len(acked) < n:
            prompt, extra = make_request(rng, 0.0)
            try:
                reply = await chat(session, url, prompt, (index + sent) % 2 == 1, timeout_s=30, **extra)
            except Exception:  # the server is gone: the kill came
                return
            sent += 1
            if len(acked) < n and reply.ok and reply.request_id:
                acked.append(reply.request_id)
                if len(acked) == n:
                    on_nth()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    return acked


def kill_after_acks(
    api_base: str, home: Path, n: int = 30, concurrency: int = 4, storage: dict[str, Any] | None = None
) -> Verdict:
    """kill -9 the gateway right after ``n`` acknowledged requests; count their rows in the file."""
    import duckdb

    gateway = GatewayProcess(home, gateway_config(api_base, storage=storage or {}), env=env_offline())
    gateway.start()
    try:
        acked = asyncio.run(acknowledge(gateway.url, n, concurrency, gateway.kill))
    finally:
        gateway.stop()
    from compass.storage.journal import recover

    with duckdb.connect(str(home / "compass.duckdb")) as con:  # read-write: replays the WAL
        recovered = recover(con, home / "compass.journal")  # what the next start does first
        quoted = ", ".join(f"'{i}'" for i in acked)
        found = {r[0] for r in con.execute(f"SELECT id FROM requests WHERE id IN ({quoted})").fetchall()}
    missing = [i for i in acked if i not in found]
    return Verdict(
        f"kill -9 right after {n} acknowledged requests ({storage or 'default storage'})",
        len(acked) == n and not missing,
        f"{len(acked) - len(missing)}/{len(acked)} acknowledged requests have their row",
        {"acked": len(acked), "missing": len(missing), "recovered_from_journal": recovered},
    )


def run(options: CrashOptions) -> list[Verdict]:
    upstream = spawn_fake_upstream(realistic_config(seed=options.seed, speedup=options.speedup))
    home = home_dir(f"crash-{options.durability}")
    config = gateway_config(
        upstream.url,
        fast_layers=not options.full_layers,
        storage={"durability": options.durability, "flush_interval_ms": options.flush_interval_ms},
    )
    env = env_offline()
    first = GatewayProcess(home, config, env=env)
    second = GatewayProcess(home, config, env=env)
    try:
        first.start()
        warm, _ = asyncio.run(load(first.url, upstream.url, options, options.warm_s, feedback=True))
        httpx.get(f"{first.url}/stats", timeout=30)  # settles background writes
        bandit_before = httpx.get(f"{first.url}/admin/api/bandit", timeout=30).json()
        cache_before = httpx.get(f"{first.url}/admin/api/cache", timeout=30).json()
        loaded, killed_at = asyncio.run(
            load(first.url, upstream.url, options, options.load_s, feedback=False, kill=first.kill)
        )
        assert killed_at is not None
        acked = [r for r in warm + loaded if r.ok and r.request_id]
        started = time.monotonic()
        second.start()
        verdicts = [
            Verdict(
                "restart after kill -9",
                True,
                f"killed with {len(loaded)} phase-2 requests sent;"
                f" restarted in {time.monotonic() - started:.1f}s",
            )
        ]
        found = rows_for(second, [r.request_id for r in acked if r.request_id])
        verdicts.append(check_history(acked, found, killed_at, options))
        verdicts.append(
            check_bandit(bandit_before, httpx.get(f"{second.url}/admin/api/bandit", timeout=30).json())
        )
        problems = httpx.get(f"{second.url}/health", timeout=30).json().get("problems", {})
        cache_after = httpx.get(f"{second.url}/admin/api/cache", timeout=30).json()
        verdicts.append(check_cache(cache_before, cache_after, problems))
        second.stop()
        verdicts.append(check_file(home / "compass.duckdb"))
        return verdicts
    finally:
        second.stop()
        first.stop()
        upstream.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.crash", description=__doc__)
    parser.add_argument("--durability", choices=["journal", "strict", "batched", "both"], default="both")
    parser.add_argument("--clients", type=int, default=CrashOptions.clients)
    parser.add_argument("--warm", type=float, default=CrashOptions.warm_s, help="phase 1 seconds")
    parser.add_argument("--load", type=float, default=CrashOptions.load_s, help="phase 2 seconds")
    parser.add_argument("--batched-flush-ms", type=float, default=500.0, help="flush interval for batched")
    parser.add_argument("--margin-ms", type=float, default=CrashOptions.margin_ms)
    parser.add_argument("--fast-layers", action="store_true", help="length classifier, no cache")
    parser.add_argument("--out", default="crash", help="results/<name>.json; '' to skip")
    parser.add_argument("--after", type=int, help="instead: kill -9 right after N acknowledged requests")
    args = parser.parse_args(argv)
    if args.after:
        return kill_after_main(args)
    modes = ["journal", "strict", "batched"] if args.durability == "both" else [args.durability]
    results = []
    for mode in modes:
        options = CrashOptions(
            durability=mode,
            clients=args.clients,
            warm_s=args.warm,
            load_s=args.load,
            flush_interval_ms=args.batched_flush_ms if mode == "batched" else CrashOptions.flush_interval_ms,
            margin_ms=args.margin_ms,
            full_layers=not args.fast_layers,
        )
        print(f"--- kill -9 under load, durability {mode}", flush=True)
        verdicts = run(options)
        for verdict in verdicts:
            print(verdict.line(), flush=True)
        results.append(
            {"durability": mode, "options": options.__dict__, "checks": [v.__dict__ for v in verdicts]}
        )
    passed = all(c["passed"] or c["skipped"] for r in results for c in r["checks"])
    print("PASS" if passed else "FAIL")
    if args.out:
        from ops.bench.common import write_json

        print(f"wrote {write_json(args.out, {'passed': passed, 'runs': results})}")
    return 0 if passed else 1


def kill_after_main(args: argparse.Namespace) -> int:
    """``--after N`` for each durability, default first, on one fake upstream."""
    import tempfile

    upstream = spawn_fake_upstream(realistic_config(seed=5, speedup=50))
    modes = [None, "strict", "batched"] if args.durability == "both" else [args.durability]
    passed = True
    try:
        for mode in modes:
            storage = {} if mode is None else {"durability": mode}
            if mode == "batched":
                storage["flush_interval_ms"] = args.batched_flush_ms
            with tempfile.TemporaryDirectory() as home:
                verdict = kill_after_acks(upstream.url, Path(home), args.after, args.clients, storage)
            print(verdict.line(), flush=True)
            passed &= verdict.passed or mode == "batched"  # batched may lose rows by design
    finally:
        upstream.terminate()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
