"""Gateway overhead over calling the fake upstream directly, measured side by side in one run.

    python -m ops.bench.overhead [--requests 400] [--concurrency 1 32] [--stream] [--apis chat responses]
                                 [--interleave] [--quick | --ab embedder-wait|...|durability]

The fake upstream and each gateway run as separate processes on loopback; the load client is
aiohttp. For every concurrency the same request mix goes (a) straight to the fake upstream and
(b) through the gateway with model "auto", so overhead = (b) - (a) on the same machine, same
minute. Gateway variants: Layer 1 off (the length rule) and cache off — the figure the ≤ 3 ms
target is about — then the default MiniLM classifier, then MiniLM plus the semantic cache
(every prompt unique, so each request pays a lookup and a store). ``--apis chat responses``
also sends the same prompts as Responses API requests (translated onto chat by the gateway; the
direct call is chat either way), so the Responses translation's own cost is the difference of
the two overheads in one run.

``--interleave`` is the fairer form of that comparison on a shared machine: at concurrency 1 each
round sends one direct call and one request per API, in an order rotated every round, so slow
minutes hit every API alike; it reports each API's p50 and the median of the per-round paired
difference against chat.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from ops.bench.common import load, post_and_read, print_table, write_json
from ops.fake_upstream import FakeModelBehaviour, FakeUpstreamConfig, spawn_fake_upstream
from ops.procs import GatewayProcess

MODELS = {
    "demo-small": ("simple", 0.1, 0.4),
    "demo-medium": ("medium", 1.0, 4.0),
    "demo-large": ("complex", 10, 40),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "gateway, layer 1 off, cache off": {"classifier": {"backend": "length"}, "cache": {"enabled": False}},
    "gateway, MiniLM layer 1, cache off": {
        "classifier": {"backend": "embedding"},
        "cache": {"enabled": False},
    },
    "gateway, MiniLM layer 1 + cache": {"classifier": {"backend": "embedding"}, "cache": {"enabled": True}},
}


def embedder_ab(option: str, values: tuple[Any, Any]) -> dict[str, dict[str, Any]]:
    """MiniLM Layer 1 (cache off) with one embedder option at two values, A/B/A/B in one run."""
    return {
        f"MiniLM layer 1, embedder {option} {value} (#{rep})": {
            "classifier": {"backend": "embedding", "options": {"embedder": {option: value}}},
            "cache": {"enabled": False},
        }
        for rep in (1, 2)
        for value in values
    }


def durability_ab() -> dict[str, dict[str, Any]]:
    """Layer 1 off, cache off, so the history write is most of what differs: journal (the
    default: each row appended to the on-disk journal before its 2xx, then batched), strict (a 2xx
    waits for its fsync'd group commit) and batched (50 ms gather, nothing on disk first)."""
    return {
        f"durability {mode} (#{rep})": {
            "classifier": {"backend": "length"},
            "cache": {"enabled": False},
            "storage": {"durability": mode, "flush_interval_ms": 50},
        }
        for rep in (1, 2)
        for mode in ("journal", "strict", "batched")
    }


AB_TESTS: dict[str, dict[str, dict[str, Any]]] = {
    "durability": durability_ab(),
    "embedder-wait": embedder_ab("max_wait_ms", (2.0, 0.0)),  # batching window vs continuous
    "embedder-runtime": embedder_ab("runtime", ("torch", "onnx")),
    "embedder-threads": embedder_ab("threads", (1, 2)),
}


def body(i: int, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
        "max_tokens": 16,
    }


def responses_body(i: int, model: str) -> dict[str, Any]:
    """The same prompt as ``body`` in the Responses API's shape."""
    return {"model": model, "input": f"Question {i}: what is {i} plus {i}?", "max_output_tokens": 16}


def unstored_body(i: int, model: str) -> dict[str, Any]:
    return {**responses_body(i, model), "store": False}


def messages_body(i: int, model: str) -> dict[str, Any]:
    """The same prompt as ``body`` in Anthropic's Messages shape (``/v1/messages``)."""
    return {**body(i, model), "max_tokens": 16}


APIS = {
    "chat": ("/v1/chat/completions", body),
    "messages": ("/v1/messages", messages_body),
    "responses": ("/v1/responses", responses_body),
    "responses-unstored": ("/v1/responses", unstored_body),
}


async def measure(
    url: str, model: str, concurrency: int, requests: int, stream: bool, make: Any = body
) -> dict[str, float]:
    warm = max(20, concurrency * 2)
    await load(url, lambda i: make(10_000_000 + i, model), concurrency, warm, stream=stream)
    return await load(url, lambda i: make(i, model), concurrency, requests, stream=stream)


async def interleaved(
    gateway: str, direct: str, apis: list[str], rounds: int, stream: bool = False
) -> dict[str, dict[str, float]]:
    """Latency per API, each round sending the direct call and every API once in a rotated order."""
    import time

    import aiohttp

    from ops.bench.common import percentile

    targets = [("direct", direct, body, "demo-small")] + [
        (api, f"{gateway}{APIS[api][0]}", APIS[api][1], "auto") for api in apis
    ]
    times: dict[str, list[float]] = {name: [] for name, *_ in targets}
    errors = dict.fromkeys(times, 0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for r in range(rounds + 50):  # the first 50 rounds warm up and are not counted
            for k in range(len(targets)):
                name, url, make, model = targets[(r + k) % len(targets)]
                payload = make(r if r >= 50 else 10_000_000 + r, model)
                if stream:
                    payload = {**payload, "stream": True}
                start = time.perf_counter()
                ok = await post_and_read(session, url, payload, stream)
                if r < 50:
                    continue
                if ok:
                    times[name].append((time.perf_counter() - start) * 1000)
                else:
                    errors[name] += 1
                    times[name].append(float("nan"))
    out: dict[str, dict[str, float]] = {}
    chat = times.get("chat")
    for name, values in times.items():
        good = [v for v in values if v == v]
        row = {"n": len(good), "errors": errors[name], "p50_ms": percentile(good, 50)}
        row["p99_ms"] = percentile(good, 99)
        if chat is not None and name != "direct":
            paired = [a - b for a, b in zip(values, chat, strict=True) if a == a and b == b]
            row["paired_over_chat_p50_ms"] = percentile(paired, 50)
        out[name] = row
    return out


def main_interleaved(args: argparse.Namespace, gateway: str, direct: str) -> None:
    apis = list(dict.fromkeys(["chat", *args.apis]))
    for stream in [False, True] if args.stream else [False]:
        result = asyncio.run(interleaved(gateway, direct, apis, args.requests, stream))
        d = result["direct"]["p50_ms"]
        rows = [
            [
                name,
                "yes" if stream else "no",
                r["n"],
                r["p50_ms"],
                r["p50_ms"] - d if name != "direct" else 0.0,
                r.get("paired_over_chat_p50_ms", float("nan")),
                r["p99_ms"],
                r["errors"],
            ]
            for name, r in result.items()
        ]
        print_table(
            "Interleaved, concurrency 1 (ms)",
            ["api", "stream", "n", "p50", "overhead p50", "paired over chat p50", "p99", "errors"],
            rows,
        )
        write_json(f"overhead_interleaved{'_stream' if stream else ''}", {"results": result})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=400, help="requests per cell (x10 at concurrency >= 8)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--stream", action="store_true", help="also measure streaming requests")
    parser.add_argument("--quick", action="store_true", help="only the layer-1-off variant")
    parser.add_argument(
        "--apis", nargs="+", choices=sorted(APIS), default=["chat"], help="gateway APIs to send"
    )
    parser.add_argument(
        "--interleave", action="store_true", help="one gateway; APIs interleaved per round (c=1)"
    )
    parser.add_argument("--ab", choices=sorted(AB_TESTS), help="instead: an A/B/A/B of one option")
    args = parser.parse_args()
    behaviour = FakeModelBehaviour(latency_ms=0.0, tokens_per_s=0.0)
    fake = spawn_fake_upstream(FakeUpstreamConfig(models={name: behaviour for name in MODELS}), port=0)
    pool = [
        {
            "name": name,
            "litellm_model": f"openai/{name}",
            "api_base": fake.url,
            "api_key": "k",
            "tier": tier,
            "input_price_per_mtok": p_in,
            "output_price_per_mtok": p_out,
        }
        for name, (tier, p_in, p_out) in MODELS.items()
    ]
    variants = dict(list(VARIANTS.items())[:1]) if args.quick or args.interleave else VARIANTS
    if args.ab:
        variants = AB_TESTS[args.ab]
    modes = [False, True] if args.stream else [False]
    results: list[dict[str, Any]] = []
    try:
        for name, overrides in variants.items():
            with tempfile.TemporaryDirectory() as home:
                # routing overhead without the history's commit wait (batched); --ab durability
                # measures what the default (strict) adds
                storage = {"flush_interval_ms": 20, "durability": "batched"}
                config = {"models": pool, "storage": storage, **overrides}
                with GatewayProcess(Path(home), config, env={"COMPASS_LOG_LEVEL": "warning"}) as gateway:
                    if args.interleave:
                        main_interleaved(args, gateway.url, f"{fake.url}/chat/completions")
                        return
                    for stream in modes:
                        for concurrency in args.concurrency:
                            n = args.requests * (10 if concurrency >= 8 else 1)
                            direct = asyncio.run(
                                measure(f"{fake.url}/chat/completions", "demo-small", concurrency, n, stream)
                            )
                            for api in args.apis:
                                path, make = APIS[api]
                                routed = asyncio.run(
                                    measure(f"{gateway.url}{path}", "auto", concurrency, n, stream, make)
                                )
                                label = name if api == "chat" else f"{name} [{api}]"
                                results.append(
                                    {
                                        "variant": label,
                                        "api": api,
                                        "stream": stream,
                                        "concurrency": concurrency,
                                        "direct": direct,
                                        "gateway": routed,
                                    }
                                )
    finally:
        fake.terminate()
    rows = [
        [
            r["variant"],
            "yes" if r["stream"] else "no",
            r["concurrency"],
            r["direct"]["p50_ms"],
            r["gateway"]["p50_ms"],
            r["gateway"]["p50_ms"] - r["direct"]["p50_ms"],
            r["direct"]["p99_ms"],
            r["gateway"]["p99_ms"],
            r["direct"]["rps"],
            r["gateway"]["rps"],
            r["gateway"]["errors"],
        ]
        for r in results
    ]
    print_table(
        "Gateway overhead over the fake upstream (ms; rps = requests/s)",
        [
            "variant",
            "stream",
            "conc",
            "direct p50",
            "gateway p50",
            "overhead p50",
            "direct p99",
            "gateway p99",
            "direct rps",
            "gateway rps",
            "errors",
        ],
        rows,
    )
    print("results:", write_json("overhead", {"results": results}))


if __name__ == "__main__":
    main()
