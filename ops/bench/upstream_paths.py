"""Per-call cost of each way to reach an OpenAI-compatible upstream, side by side in one run.

Why: LiteLLM is our provider layer, but its per-call work (client set-up, logging, cost lookups)
can dwarf the gateway's own overhead. This measures, at concurrency 1 against an instant fake
upstream on loopback, rounds interleaved so machine noise hits every variant alike:

* ``aiohttp raw``: one POST on a shared session (the floor);
* ``openai SDK``: ``AsyncOpenAI.chat.completions.create``;
* ``compass direct``: ``LiteLLMUpstream`` taking its direct path (self-hosted OpenAI-compatible);
* ``compass litellm``: ``LiteLLMUpstream`` with the direct path off (litellm, configured quiet);
* ``litellm default``: a bare ``litellm.acompletion`` with LiteLLM's default settings (run in a
  child process, since our configuration changes LiteLLM's globals).

``python -m ops.bench.upstream_paths [--calls 300] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from layers.types import ModelSpec
from ops.bench.common import percentile, print_table, write_json
from ops.fake_upstream import instant_config, spawn_fake_upstream

MESSAGES = [{"role": "user", "content": "ping"}]


async def timed(call: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def in_process(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    import aiohttp
    import openai

    from compass.upstream.litellm_client import LiteLLMUpstream

    model = ModelSpec(name="m", litellm_model="openai/m", api_base=url, api_key="k", tier="simple")
    direct, via_litellm = LiteLLMUpstream(direct=True), LiteLLMUpstream(direct=False)
    await direct.start()
    await via_litellm.start()
    sdk = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
    session = aiohttp.ClientSession()
    body = json.dumps({"model": "m", "messages": MESSAGES})

    async def raw() -> None:
        async with session.post(
            f"{url}/chat/completions", data=body, headers={"content-type": "application/json"}
        ) as r:
            await r.json()

    variants = {
        "aiohttp raw": raw,
        "openai SDK": lambda: sdk.chat.completions.create(model="m", messages=MESSAGES),
        "compass direct": lambda: direct.complete(model, MESSAGES, {}),
        "compass litellm": lambda: via_litellm.complete(model, MESSAGES, {}),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up
        await timed(call, 20)
    for _ in range(rounds):
        for name, call in variants.items():
            samples[name] += await timed(call, calls // rounds)
    await session.close()
    await direct.close()
    await sdk.close()
    return samples


async def litellm_default(url: str, calls: int) -> list[float]:
    import litellm

    async def call() -> None:
        await litellm.acompletion(model="openai/m", messages=MESSAGES, api_base=url, api_key="k")

    await timed(call, 20)
    return await timed(call, calls)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child-litellm-default", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.child_litellm_default:
        print(json.dumps(asyncio.run(litellm_default(args.child_litellm_default, args.calls))))
        return
    fake = spawn_fake_upstream(instant_config("m"))
    try:
        samples = asyncio.run(in_process(fake.url, args.calls, args.rounds))
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops.bench.upstream_paths",
                "--calls",
                str(args.calls),
                "--child-litellm-default",
                fake.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        samples["litellm default"] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        fake.terminate()
    floor = percentile(samples["aiohttp raw"], 50)
    rows, results = [], {}
    for name, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        results[name] = {"p50_ms": p50, "p99_ms": p99, "calls": len(values)}
        rows.append([name, p50, p99, p50 - floor, p50 / floor])
    print_table(
        "Per-call latency to an instant fake upstream, concurrency 1 (ms)",
        ["path", "p50", "p99", "p50 over raw", "x raw"],
        rows,
    )
    print("results:", write_json("upstream_paths", {"results": results}))


if __name__ == "__main__":
    main()
