"""Decision cost and memory of the per-prompt selector (``neighbourhood``, the server's default).

    python -m ops.bench.bandit --neighbourhood [--rows 100000] [--memory-rows 1000000]

A 40-model pool; the memory first folds ``rows`` reward events whose vectors are clustered unit
vectors in 384 dims (300 topics plus noise, like prompts), one chosen model rewarded per request
as in production. Then ``select`` is timed one decision at a time (p50, p99) next to the tier
Thompson selector on the same events, both with the default 64 propensity samples. The memory
figures come from ``NeighbourMemory.nbytes`` and the process's peak RSS after folding
``memory_rows`` events with the default ``max_rows`` (the bound) and with ``max_rows`` raised to
hold them all (the per-row cost).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import numpy as np

from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.neighbourhood import NEIGHBOUR_DEFAULTS, NeighbourhoodSelector
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification
from layers.types import TIERS, ModelSpec

TARGET_MS = 0.3
DIM = 384


def vectors(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fold(selectors: list[Any], pool: list[ModelSpec], n: int, seed: int = 0) -> float:
    """Fold ``n`` events into every selector (in batches of vectors); returns seconds per 1k events."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    names = [m.name for m in pool]
    start = time.perf_counter()
    for base in range(0, n, 10_000):
        batch = vectors(min(10_000, n - base), rng, centres)
        models = rng.integers(len(names), size=len(batch))
        rewards = rng.random(len(batch))
        for j, vec in enumerate(batch):
            event = RewardEvent(
                request_id=f"r{base + j}",
                context=TIERS[(base + j) % 3],
                model=names[models[j]],
                reward=float(rewards[j]),
                ts=1.7e9 + base + j,
                embedding=vec,
            )
            for selector in selectors:
                selector.observe(event)
    return (time.perf_counter() - start) / max(n, 1) * 1000


def time_select(selector: Any, pool: list[ModelSpec], decisions: int, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32)
    queries = vectors(decisions, rng, centres)
    ctxs = [
        SelectionContext(
            classification=Classification(tier=TIERS[k % 3], score=0.5, backend="bench"),  # type: ignore[arg-type]
            candidates=pool,
            prompt_tokens=(50, 400, 2000)[k % 3],
            cost_weight=0.3,
            embedding=q,
        )
        for k, q in enumerate(queries)
    ]
    for ctx in ctxs[:200]:
        selector.select(ctx)
    singles = []
    perf = time.perf_counter_ns
    for ctx in ctxs:
        start = perf()
        selector.select(ctx)
        singles.append(perf() - start)
    singles.sort()
    return {
        "p50_ms": statistics.median(singles) / 1e6,
        "p99_ms": singles[int(0.99 * (len(singles) - 1))] / 1e6,
        "mean_ms": sum(singles) / len(singles) / 1e6,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(pool: list[ModelSpec], rows: int, memory_rows: int, decisions: int) -> dict[str, Any]:
    clock = lambda: 1.7e9 + 2 * max(rows, memory_rows)  # noqa: E731
    nb = NeighbourhoodSelector({"seed": 0}, pool, clock=clock)
    th = ThompsonSelector({"seed": 0}, pool, clock=clock)
    per_k = fold([nb, th], pool, rows)
    timing = {"neighbourhood": time_select(nb, pool, decisions), "thompson": time_select(th, pool, decisions)}
    out: dict[str, Any] = {
        "models": len(pool),
        "rows": rows,
        "options": {
            k: NEIGHBOUR_DEFAULTS[k] for k in ("k", "temp", "kernel", "ctx_cap", "max_rows", "nprobe")
        },
        "fold_ms_per_1k_events": per_k,
        "timing": timing,
        "ratio_p50": timing["neighbourhood"]["p50_ms"] / timing["thompson"]["p50_ms"],
        "memory_bytes_at_rows": nb.memory.nbytes(),
    }
    del nb, th
    if memory_rows:
        memory = {}
        for label, options in (
            ("default max_rows", {}),
            ("max_rows = all", {"max_rows": memory_rows}),
        ):
            sel = NeighbourhoodSelector({"seed": 0, **options}, pool, clock=clock)
            before = peak_rss_mb()
            fold([sel], pool, memory_rows, seed=2)
            memory[label] = {
                "events": memory_rows,
                "rows_held": sel.memory.n,
                "nbytes": sel.memory.nbytes(),
                "bytes_per_row": sel.memory.nbytes() / max(sel.memory.n, 1),
                "peak_rss_mb_before": before,
                "peak_rss_mb_after": peak_rss_mb(),
                "p50_ms": time_select(sel, pool, min(decisions, 1000))["p50_ms"],
            }
            del sel
        out["memory"] = memory
    return out
