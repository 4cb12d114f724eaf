"""Decision cost and memory of the per-prompt selector (``neighbourhood``, the server's default).

    python -m ops.bench.bandit --neighbourhood [--rows 100000] [--memory-rows 1000000]

A 40-model pool; the memory first folds ``rows`` reward events whose vectors are clustered unit
vectors in 384 dims (300 topics plus noise, like prompts), one chosen model rewarded per request
as in production. Then ``select`` is timed one decision at a time (p50, p99) next to the tier
Thompson selector on the same events, both with the default 64 propensity samples. Then, side by
side, the per-prompt selector and its decision path before the speed-up
(``bandit_neighbourhood_ref.py``, folded from the same events) decide the same contexts in
alternating blocks, ``--repeats`` times; their selections are compared field by field (they must be
identical). Two 100k-row memories in one process make each decision slower than alone (more cache
misses), so the side-by-side figures give the ratio, the first ones the decision cost. The memory
figures come from ``NeighbourMemory.nbytes`` and the process's peak RSS after folding
``memory_rows`` events with the default ``max_rows`` (the bound) and with ``max_rows`` raised to
hold them all (the per-row cost).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import msgspec
import numpy as np

from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.neighbourhood import NEIGHBOUR_DEFAULTS, NeighbourhoodSelector
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification
from layers.types import TIERS, ModelSpec

TARGET_MS = 0.3
BEFORE = "neighbourhood, before the speed-up (b41709d)"
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


def contexts(pool: list[ModelSpec], decisions: int, seed: int = 1) -> list[SelectionContext]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32)
    queries = vectors(decisions, rng, centres)
    return [
        SelectionContext(
            classification=Classification(tier=TIERS[k % 3], score=0.5, backend="bench"),  # type: ignore[arg-type]
            candidates=pool,
            prompt_tokens=(50, 400, 2000)[k % 3],
            cost_weight=0.3,
            embedding=q,
        )
        for k, q in enumerate(queries)
    ]


def summary(singles: list[int]) -> dict[str, float]:
    singles = sorted(singles)
    return {
        "p50_ms": statistics.median(singles) / 1e6,
        "p99_ms": singles[int(0.99 * (len(singles) - 1))] / 1e6,
        "mean_ms": sum(singles) / len(singles) / 1e6,
    }


def time_select(selector: Any, pool: list[ModelSpec], decisions: int, seed: int = 1) -> dict[str, float]:
    ctxs = contexts(pool, decisions, seed)
    for ctx in ctxs[:200]:
        selector.select(ctx)
    singles = []
    perf = time.perf_counter_ns
    for ctx in ctxs:
        start = perf()
        selector.select(ctx)
        singles.append(perf() - start)
    return summary(singles)


def side_by_side(
    selectors: dict[str, Any], pool: list[ModelSpec], decisions: int, repeats: int, block: int = 250
) -> tuple[dict[str, dict[str, float]], list[list[Any]]]:
    """Each selector decides the same contexts in alternating blocks of ``block`` (the order of
    the selectors rotates per block), ``repeats`` times; p50/p99/mean over all single decisions,
    and every selector's selections of the first pass (to compare them)."""
    ctxs = contexts(pool, decisions)
    for selector in selectors.values():
        for ctx in ctxs[:200]:
            selector.select(ctx)
    names = list(selectors)
    singles: dict[str, list[int]] = {name: [] for name in names}
    first: dict[str, list[Any]] = {name: [] for name in names}
    perf = time.perf_counter_ns
    for rep in range(repeats):
        for b, start in enumerate(range(0, decisions, block)):
            for name in names[b % len(names) :] + names[: b % len(names)]:
                selector, out = selectors[name], singles[name]
                for ctx in ctxs[start : start + block]:
                    t0 = perf()
                    chosen = selector.select(ctx)
                    out.append(perf() - t0)
                    if rep == 0:
                        first[name].append(chosen)
    return {name: summary(singles[name]) for name in names}, [first[name] for name in names]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    pool: list[ModelSpec], rows: int, memory_rows: int, decisions: int, repeats: int = 3
) -> dict[str, Any]:
    from ops.bench.bandit_neighbourhood_ref import ReferenceNeighbourhood

    clock = lambda: 1.7e9 + 2 * max(rows, memory_rows)  # noqa: E731
    nb = NeighbourhoodSelector({"seed": 0}, pool, clock=clock)
    th = ThompsonSelector({"seed": 0}, pool, clock=clock)
    ref = ReferenceNeighbourhood({"seed": 0}, pool, clock=clock)
    per_k = fold([nb, th], pool, rows)
    timing = {"neighbourhood": time_select(nb, pool, decisions), "thompson": time_select(th, pool, decisions)}
    fold([ref], pool, rows)  # the same events
    nb.rng, ref.rng = np.random.default_rng(0), np.random.default_rng(0)  # the same draws from here
    pair, picks = side_by_side({"neighbourhood": nb, BEFORE: ref}, pool, decisions, repeats)
    pairs = zip(picks[0], picks[1], strict=True)
    same = sum(msgspec.to_builtins(a) == msgspec.to_builtins(b) for a, b in pairs)
    out: dict[str, Any] = {
        "models": len(pool),
        "rows": rows,
        "repeats": repeats,
        "options": {
            k: NEIGHBOUR_DEFAULTS[k] for k in ("k", "temp", "kernel", "ctx_cap", "max_rows", "nprobe")
        },
        "fold_ms_per_1k_events": per_k,
        "timing": timing,
        "ratio_p50": timing["neighbourhood"]["p50_ms"] / timing["thompson"]["p50_ms"],
        "side_by_side": pair,
        "ratio_p50_vs_before": pair["neighbourhood"]["p50_ms"] / pair[BEFORE]["p50_ms"],
        "identical_selections": same,
        "decisions_compared": len(picks[0]),
        "memory_bytes_at_rows": nb.memory.nbytes(),
    }
    del nb, th, ref
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
