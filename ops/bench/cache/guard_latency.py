"""What the near-miss guard adds to a semantic lookup: guard on vs off, side by side in one run.

A real ``SemanticCache`` (DuckDB, the default HNSW index) holds the ``text_a`` questions of QQP
pairs (real MiniLM vectors, ``vectors.py``); each ``text_b`` is looked up twice in a row, once
with the guard on and once off (the order alternates), the query embedding already computed.
Two figures:

* ``lookup p50``: the whole lookup, guard on vs off (a refused candidate is a miss, which skips
  the DuckDB read of a hit, so on/off differ in more than the guard);
* ``guard per lookup``: the time spent in ``near_miss`` itself within a guarded lookup, with its
  memo cleared before each lookup (worst case: neither prompt seen before).

``--threshold`` below the default makes more candidates reach the guard (up to ``top_k`` = 8).

Run: ``python -m ops.bench.cache.guard_latency --entries 5000 --queries 1000``. Writes
``ops/bench/results/cache_guard_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from ops.bench.cache.vectors import load_pairs, qqp_vectors, texts_for_pairs, unique_texts
from ops.bench.common import percentile, write_json

BODY = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
}


async def run(args: argparse.Namespace, threshold: float) -> dict[str, Any]:
    import layers.cache.semantic as semantic
    from compass.storage.db import Database
    from layers.cache import guard, reversal
    from layers.cache.keys import make_cache_key
    from layers.types import Prompt

    pairs = load_pairs()[: args.entries]
    texts, vectors = qqp_vectors(texts_for_pairs(len(pairs)), verbose=False)
    row = {t: i for i, t in enumerate(unique_texts()[: len(texts)])}
    spent: list[float] = []
    original = guard.near_miss

    def timed(a: str, b: str) -> str | None:
        t0 = time.perf_counter()
        try:
            return original(a, b)
        finally:
            spent.append(time.perf_counter() - t0)

    semantic.near_miss = timed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "g.duckdb")
        db.open()
        cache = semantic.SemanticCache({"threshold": threshold}, db=db)
        await cache.start()

        def request(text: str) -> tuple[Any, Prompt]:
            key = make_cache_key("t", [{"role": "user", "content": text}], {"temperature": 0})
            prompt = Prompt(text, 10)
            prompt.set_embedding(vectors[row[text]])
            return key, prompt

        for i, text in enumerate(dict.fromkeys(p["text_a"] for p in pairs)):
            key, prompt = request(text)
            await cache.store(key, prompt, BODY, "m", 1.0, f"r{i}")
        times: dict[bool, list[float]] = {True: [], False: []}
        guard_ms: list[float] = []
        checked_ms: list[float] = []  # lookups where at least one candidate reached the guard
        hits = {True: 0, False: 0}
        for q, p in enumerate(pairs[: args.queries]):
            if p["text_b"] in cache.entries.by_exact:
                continue
            for on in (True, False) if q % 2 == 0 else (False, True):
                guard.signature.cache_clear()
                reversal.tokens.cache_clear()
                cache.guard = on
                spent.clear()
                key, prompt = request(p["text_b"])
                t0 = time.perf_counter()
                hit = await cache.lookup(key, prompt, min_capability=0.0)
                times[on].append((time.perf_counter() - t0) * 1000)
                hits[on] += hit is not None
                if on:
                    guard_ms.append(sum(spent) * 1000)
                    if spent:
                        checked_ms.append(sum(spent) * 1000)
        await cache.close()
        db.close()
    semantic.near_miss = original  # type: ignore[assignment]
    return {
        "threshold": threshold,
        "entries": len(cache.entries),
        "lookups": len(times[True]),
        "lookup_p50_ms": {"guard_on": percentile(times[True], 50), "guard_off": percentile(times[False], 50)},
        "lookup_p99_ms": {"guard_on": percentile(times[True], 99), "guard_off": percentile(times[False], 99)},
        "guard_per_lookup_ms": {
            "p50": percentile(guard_ms, 50),
            "p99": percentile(guard_ms, 99),
            "max": max(guard_ms),
        },
        "guard_when_called_ms": {
            "lookups": len(checked_ms),
            "p50": percentile(checked_ms, 50),
            "p99": percentile(checked_ms, 99),
        },
        "hits": {"guard_on": hits[True], "guard_off": hits[False]},
    }


def main() -> None:
    from layers.cache.options import DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000, help="QQP pairs whose text_a is stored")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[DEFAULT_THRESHOLD, 0.8])
    args = parser.parse_args()
    results = [asyncio.run(run(args, t)) for t in args.thresholds]
    write_json("cache_guard_latency", {"runs": results})
    print(
        "| threshold | lookups | lookup p50 ms on / off | p99 on / off | guard ms p50 / p99 / max |", end=""
    )
    print(" lookups reaching the guard | their guard ms p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        p50, p99, g = r["lookup_p50_ms"], r["lookup_p99_ms"], r["guard_per_lookup_ms"]
        c = r["guard_when_called_ms"]
        print(
            f"| {r['threshold']} | {r['lookups']} | {p50['guard_on']:.3f} / {p50['guard_off']:.3f} |"
            f" {p99['guard_on']:.3f} / {p99['guard_off']:.3f} |"
            f" {g['p50']:.3f} / {g['p99']:.3f} / {g['max']:.3f} | {c['lookups']} |"
            f" {c['p50']:.3f} / {c['p99']:.3f} |"
        )


if __name__ == "__main__":
    main()
