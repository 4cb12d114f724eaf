"""Fault scenarios, each a fresh gateway on a fake upstream told to misbehave.

(a) flaky   30 % errors plus 10 % hangs past the gateway's timeout on two of three models: the
            third, healthy one is always in the fallback plan, so clients see no failure.
(b) all down every model errors or hangs: each request ends in a clean 502/504 OpenAI error
            within timeout x attempts + margin; once the upstream heals, circuits close again.
(c) broken   a stream that breaks after its first tokens ends with an OpenAI error event (no
            [DONE]) and its row records the error; a client that hangs up is recorded as 499.
(d) learning failures become zero-reward rows (source 'failure') and open circuits (/health).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.fake_upstream import FakeModelBehaviour
from ops.faults.client import chat_body, make_prompt
from ops.faults.harness import POOL_SHAPE, Verdict, gateway_config, read_stream
from ops.faults.rig import Rig, attempts_of

FLAKY = ("demo-small", "demo-medium")
HEALTHY = "demo-large"
MAX_RETRIES = 1


@dataclass
class FaultOptions:
    requests: int = 300
    concurrency: int = 16
    timeout_s: float = 1.0  # per-model upstream timeout in the gateway
    hang_s: float = 4.0  # how long a "timed out" upstream call hangs (> timeout_s)
    error_rate: float = 0.3
    timeout_rate: float = 0.1
    breaker_cooldown_s: float = 2.0
    margin_s: float = 3.0
    down_requests: int = 40  # for (b)
    broken_streams: int = 10  # for (c)
    seed: int = 11


def fast(latency_ms: float = 30.0, **faults: Any) -> FakeModelBehaviour:
    """A quick fake model (these scenarios measure failure handling, not model speed)."""
    return FakeModelBehaviour(latency_ms=latency_ms, tokens_per_s=400.0, completion_tokens=24, **faults)


def scenario_config(upstream_url: str, options: FaultOptions, path: str, **upstream: Any) -> dict[str, Any]:
    return gateway_config(
        upstream_url,
        timeout_s=options.timeout_s,
        selector={"backend": "static"},  # deterministic: short prompts go to the flaky small model first
        storage={"flush_interval_ms": 10},
        upstream={
            "direct_openai_compatible": path == "direct",
            "max_retries": MAX_RETRIES,
            "max_fallback_models": 2,
            "breaker_failures": 3,
            "breaker_cooldown_s": options.breaker_cooldown_s,
            **upstream,
        },
    )


def jobs_for(count: int, seed: int) -> list[tuple[str, bool]]:
    """``count`` mixed-length prompts, every other one streamed."""
    rng = random.Random(seed)
    return [(make_prompt(rng), i % 2 == 1) for i in range(count)]


def failed_attempts(rig: Rig) -> list[tuple[str, str, Any]]:
    """``(request_id, model, status)`` of every upstream attempt that failed."""
    failed = []
    for request_id, attempts in rig.sql("SELECT id, attempts FROM requests"):
        for attempt in attempts_of(attempts):
            if attempt.get("status") != "ok":
                failed.append((request_id, attempt.get("model"), attempt.get("status")))
    return failed


def learning_verdicts(
    rig: Rig, expect_open: tuple[str, ...], expect_closed: tuple[str, ...], every: bool
) -> list[Verdict]:
    """(d): zero-reward rows for failed models, and circuits open (``every`` one, or at least one)."""
    failed = failed_attempts(rig)
    failed_pairs = {(r, m) for r, m, _ in failed}
    rewards = rig.sql("SELECT request_id, model, reward FROM rewards WHERE source = 'failure'")
    unexplained = [r for r in rewards if (r[0], r[1]) not in failed_pairs or r[2] != 0.0]
    breakers = rig.health()["breakers"]
    tripped = {name: b["trips"] for name, b in breakers.items()}
    return [
        Verdict(
            "(d) failures are zero-reward rows",
            bool(rewards) and not unexplained,
            f"{len(rewards)} rows with source 'failure' and reward 0 for {len(failed)} failed attempts; "
            f"{len(unexplained)} without a matching failed attempt",
            {"failure_rewards": len(rewards), "failed_attempts": len(failed)},
        ),
        Verdict(
            "(d) circuits open on failing models",
            (all if every else any)(tripped.get(m, 0) > 0 for m in expect_open)
            and all(tripped.get(m, 0) == 0 for m in expect_closed),
            f"trips per model {tripped}",
            {"breakers": breakers},
        ),
    ]


async def flaky(rig: Rig, options: FaultOptions) -> list[Verdict]:
    """(a) 30 % errors + timeouts on the chosen models, one healthy fallback: zero client failures."""
    faults = {
        "error_rate": options.error_rate,
        "timeout_rate": options.timeout_rate,
        "hang_s": options.hang_s,
    }
    rig.configure({**{m: fast(**faults) for m in FLAKY}, HEALTHY: fast(60.0)}, seed=options.seed)
    replies = await rig.burst(jobs_for(options.requests, options.seed), options.concurrency, timeout_s=60)
    bad = [r for r in replies if not r.ok]
    failed = failed_attempts(rig)
    statuses: dict[str, int] = {}
    for _, _, status in failed:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    rows = rig.sql("SELECT count(*), count(*) FILTER (WHERE status = 200) FROM requests")[0]
    flaky_names = ", ".join(f"'{m}'" for m in FLAKY)
    first_flaky = rig.sql(f"SELECT count(*) FROM requests WHERE routing->>'model' IN ({flaky_names})")[0][0]
    verdicts = [
        Verdict(
            "(a) no client-visible failure",
            not bad,
            f"{len(replies) - len(bad)}/{len(replies)} ok ({sum(r.stream for r in replies)} streamed); "
            f"upstream failures absorbed: {len(failed)} {statuses}; "
            f"{first_flaky} requests chose a flaky model first",
            {
                "requests": len(replies),
                "ok": len(replies) - len(bad),
                "failed_examples": [(r.status, r.transport_error, r.body) for r in bad[:3]],
                "absorbed_failures": statuses,
                "chose_flaky_model": first_flaky,
                "p99_ms": sorted(r.ms for r in replies)[int(0.99 * (len(replies) - 1))],
            },
        ),
        Verdict(
            "(a) every request has its row",
            rows == [len(replies), len(replies)],
            f"{rows[0]} rows, {rows[1]} with status 200, for {len(replies)} requests",
        ),
    ]
    # a flaky model only reached as a fallback may never see three failures in a row: one must trip
    return verdicts + learning_verdicts(rig, FLAKY, expect_closed=(HEALTHY,), every=False)


async def all_down(rig: Rig, options: FaultOptions) -> list[Verdict]:
    """(b) every model errors or hangs: clean 502/504s, each within the attempt budget."""
    count = options.down_requests
    rig.configure(
        {
            "demo-small": fast(error_rate=1.0, error_status=503),
            "demo-medium": fast(timeout_rate=1.0, hang_s=options.hang_s),
            "demo-large": fast(error_rate=1.0, error_status=500, timeout_rate=0.5, hang_s=options.hang_s),
        },
        seed=options.seed,
    )
    from compass.pipeline.exchange import RETRY_BACKOFF_S

    attempts = (MAX_RETRIES + 1) * len(POOL_SHAPE)  # x (chosen + max_fallback_models)
    backoff_s = sum(RETRY_BACKOFF_S * 2**a for a in range(MAX_RETRIES)) * len(POOL_SHAPE)
    bound_s = options.timeout_s * attempts + backoff_s + options.margin_s
    replies = await rig.burst(jobs_for(count, options.seed + 1), min(options.concurrency, 8), timeout_s=60)
    unclean = [r for r in replies if r.status not in (502, 504) or not r.clean_error]
    slowest = max(r.ms for r in replies) / 1000
    by_status: dict[int, int] = {}
    for reply in replies:
        by_status[reply.status] = by_status.get(reply.status, 0) + 1
    rows = rig.sql("SELECT status, count(*) FROM requests GROUP BY status ORDER BY status")
    verdicts = [
        Verdict(
            "(b) clean 502/504 OpenAI errors",
            not unclean,
            f"statuses {by_status}; {len(unclean)} not a 502/504 with an OpenAI error body",
            {"statuses": by_status, "unclean_examples": [(r.status, r.body) for r in unclean[:3]]},
        ),
        Verdict(
            "(b) no hangs",
            slowest <= bound_s,
            f"slowest {slowest:.2f}s <= bound {bound_s:.2f}s (timeout {options.timeout_s}s"
            f" x {attempts} attempts + backoff + {options.margin_s}s)",
            {"slowest_s": slowest, "bound_s": bound_s},
        ),
        Verdict(
            "(b) failures recorded",
            sum(n for s, n in rows if s in (502, 504)) == count,
            f"rows by status {dict((s, n) for s, n in rows)}",
        ),
    ]
    verdicts += learning_verdicts(rig, tuple(POOL_SHAPE), expect_closed=(), every=True)
    rig.configure({name: fast() for name in POOL_SHAPE})
    await asyncio.sleep(options.breaker_cooldown_s + 0.2)
    healed = await rig.burst(jobs_for(12, options.seed + 2), 4)
    for name in POOL_SHAPE:  # a half-open circuit closes on its first successful probe
        healed += await rig.burst([(f"probe {name}", False)], 1, model=name)
    states = {name: b["state"] for name, b in rig.health()["breakers"].items()}
    verdicts.append(
        Verdict(
            "(b) recovers once the upstream heals",
            all(r.ok for r in healed) and all(s == "closed" for s in states.values()),
            f"{sum(r.ok for r in healed)}/{len(healed)} ok after the cooldown; circuits {states}",
        )
    )
    return verdicts


async def broken_stream(rig: Rig, options: FaultOptions) -> list[Verdict]:
    """(c) a stream broken after its first tokens: an error event, no [DONE], and a 502 row."""
    count = options.broken_streams
    rig.configure({name: fast() for name in POOL_SHAPE})
    jobs = [(f"story {i} please [[fake:stream_error]]", True) for i in range(count)]
    replies = await rig.burst(jobs, 4)
    wrong = []
    for reply in replies:
        outcome = reply.outcome
        if not (
            reply.status == 200
            and outcome is not None
            and outcome.chunks >= 1
            and reply.clean_error
            and not outcome.done
        ):
            wrong.append(reply)
    rows = rig.wait_rows([r.request_id or "" for r in replies])
    row_problems = []
    for reply in replies:
        row = rows.get(reply.request_id or "")
        if row is None:
            row_problems.append(f"{reply.request_id}: no row")
            continue
        status, stream, error, content, _ = row
        if (
            status != 502
            or not stream
            or not error
            or content != (reply.outcome.text if reply.outcome else None)
        ):
            row_problems.append(
                f"{reply.request_id}: status {status}, error {error!r}, content kept {content!r}"
            )
    verdicts = [
        Verdict(
            "(c) broken stream ends with an OpenAI error event",
            not wrong,
            f"{count - len(wrong)}/{count} streams: first chunk(s), then an error event, no [DONE]"
            f" ({sum(bool(r.outcome and r.outcome.text) for r in replies)} with partial text)"
            + (f"; first bad: {wrong[0].status} {wrong[0].outcome}" if wrong else ""),
        ),
        Verdict(
            "(c) the row records the broken stream",
            not row_problems,
            f"{count - len(row_problems)}/{count} rows with status 502, the error and the partial answer"
            + (f"; {row_problems[0]}" if row_problems else ""),
        ),
    ]
    rewarded = {
        r[0] for r in rig.sql("SELECT request_id FROM rewards WHERE source = 'failure' AND reward = 0")
    }
    unrewarded = [r.request_id for r in replies if r.request_id not in rewarded]
    verdicts.append(
        Verdict(
            "(d) a broken stream is a zero reward for its model",
            not unrewarded,
            f"{count - len(unrewarded)}/{count} broken streams have a 'failure' reward row",
        )
    )
    verdicts.append(await client_hangs_up(rig))
    return verdicts


async def client_hangs_up(rig: Rig) -> Verdict:
    """A client that closes the connection mid-stream leaves a row with status 499."""
    import aiohttp

    body = chat_body("a long answer please [[fake:tokens=400]]", True)
    rig.configure({name: FakeModelBehaviour(latency_ms=10.0, tokens_per_s=40.0) for name in POOL_SHAPE})
    request_id = None
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{rig.url}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                if line.startswith(b"data:") and b'"id"' in line:
                    request_id = read_stream(line.decode()).request_id
                    break
            response.close()
    row = rig.wait_rows([request_id or ""]).get(request_id or "")
    return Verdict(
        "(c) client hang-up is recorded",
        row is not None and row[0] == 499,
        f"row for {request_id}: status {row[0] if row else None}, error {row[2] if row else None!r}",
    )


SCENARIOS = {"flaky": flaky, "all_down": all_down, "broken_stream": broken_stream}


def run_scenario(name: str, upstream_url: str, options: FaultOptions, path: str, home: Path) -> list[Verdict]:
    """One scenario on a fresh gateway (fresh breakers, rewards and history)."""
    with Rig(upstream_url, scenario_config(upstream_url, options, path), home) as rig:
        started = time.monotonic()
        verdicts = asyncio.run(SCENARIOS[name](rig, options))
        for verdict in verdicts:
            verdict.figures.setdefault("seconds", round(time.monotonic() - started, 2))
        return verdicts
