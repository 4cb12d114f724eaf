"""Layer 2 decision cost: ``ThompsonSelector.select`` per decision for pools of 3, 10, 40 and 100 models.

    python -m ops.bench.bandit [--decisions 3000] [--repeats 5] [--quick]

Each pool's posteriors first fold 2,000 random reward events, so they are not the bare prior.
Modes: propensity off (``propensity_samples: 0``); on (the default 64 draws) with a steady
posterior; on with a reward folded in between every two decisions (the bank's worst case:
the updated column is redrawn every time); on with every draw fresh (the code path before the
draw bank, forced at every pool size); and on under a half-life, where every posterior moves with
the clock so all draws are fresh each call anyway.
The target is ≤ 0.2 ms per decision at 40 models. Timings are the median over repeats of the
mean per decision, plus the p99 of single decisions; the machine is shared, so expect noise.

It also checks the propensity estimate: for 40 models, each logged propensity against its
expectation (64·p + 1)/65, with p from 20,000 fresh draws (mean signed error ≈ 0: unbiased).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import numpy as np

from layers.bandit import thompson
from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification
from layers.types import TIERS, ModelSpec
from ops.bench.common import print_table, write_json

POOLS = (3, 10, 40, 100)
TARGET_MS = 0.2
MODES: dict[str, dict[str, Any]] = {
    "propensity off": {"propensity_samples": 0},
    "propensity 64, steady posterior": {"propensity_samples": 64},
    "propensity 64, reward between decisions": {"propensity_samples": 64, "_update": True},
    "propensity 64, fresh draws every call (before the bank)": {"propensity_samples": 64, "_fresh": True},
    "propensity 64, half-life (all draws fresh)": {"propensity_samples": 64, "half_life_s": 3600.0},
}


def make_pool(n: int) -> list[ModelSpec]:
    rnd = random.Random(n)
    return [
        ModelSpec(
            name=f"model-{i:03d}",
            litellm_model=f"openai/model-{i:03d}",
            tier=TIERS[i % 3],
            input_price_per_mtok=round(rnd.uniform(0.05, 15.0), 3),
            output_price_per_mtok=round(rnd.uniform(0.1, 60.0), 3),
        )
        for i in range(n)
    ]


def warmed_selector(pool: list[ModelSpec], options: dict[str, Any], clock: list[float]) -> ThompsonSelector:
    sel = ThompsonSelector({"seed": 0, **options}, pool, clock=lambda: clock[0])
    rnd = random.Random(1)
    for k in range(2000):
        model = rnd.choice(pool).name
        sel.observe(
            RewardEvent(
                request_id=f"w{k}", context=rnd.choice(TIERS), model=model, reward=rnd.random(), ts=clock[0]
            )
        )
        clock[0] += 1.0
    return sel


def context(pool: list[ModelSpec], tier: str = "medium", tokens: int = 400) -> SelectionContext:
    return SelectionContext(
        classification=Classification(tier=tier, score=0.5, backend="bench"),  # type: ignore[arg-type]
        candidates=pool,
        prompt_tokens=tokens,
        cost_weight=0.3,
    )


def time_mode(n: int, mode: dict[str, Any], decisions: int, repeats: int) -> dict[str, float]:
    saved = thompson._FRESH_DRAWS_MAX
    if mode.get("_fresh"):  # the pre-bank code path: every propensity draw fresh, at any pool size
        thompson._FRESH_DRAWS_MAX = 1 << 62
    try:
        return _time_mode(n, mode, decisions, repeats)
    finally:
        thompson._FRESH_DRAWS_MAX = saved


def _time_mode(n: int, mode: dict[str, Any], decisions: int, repeats: int) -> dict[str, float]:
    pool = make_pool(n)
    update = bool(mode.get("_update"))
    clock = [1_700_000_000.0]
    sel = warmed_selector(pool, {k: v for k, v in mode.items() if not k.startswith("_")}, clock)
    ctxs = [context(pool, tokens=t) for t in (50, 400, 2000)]
    for k in range(200):
        sel.select(ctxs[k % 3])
    means, singles = [], []
    perf = time.perf_counter_ns
    for _ in range(repeats):
        total = 0
        for k in range(decisions):
            ctx = ctxs[k % 3]
            start = perf()
            chosen = sel.select(ctx)
            elapsed = perf() - start
            total += elapsed
            singles.append(elapsed)
            clock[0] += 0.01
            if update:
                sel.observe(
                    RewardEvent(
                        request_id=f"b{k}", context="medium", model=chosen.model, reward=0.6, ts=clock[0]
                    )
                )
        means.append(total / decisions / 1e6)
    singles.sort()
    return {
        "ms_per_decision": statistics.median(means),
        "ms_best_repeat": min(means),
        "p99_ms": singles[int(0.99 * (len(singles) - 1))] / 1e6,
    }


def propensity_check(decisions: int = 200, reference_samples: int = 20_000) -> dict[str, float]:
    """Logged propensity vs a many-draw estimate of the same probability (40 models, rewards between)."""
    pool = make_pool(40)
    clock = [1_700_000_000.0]
    sel = warmed_selector(pool, {"propensity_samples": 64}, clock)
    ref = ThompsonSelector({"seed": 99, "propensity_samples": 0}, pool)
    names = [m.name for m in pool]
    errors = []
    for k in range(decisions):
        ctx = context(pool, tokens=(50, 400, 2000)[k % 3])
        chosen = sel.select(ctx)
        ref._states, ref._t_ref = sel._states, sel._t_ref  # same posteriors, independent draws
        p = float(ref.shares(ctx, reference_samples)[names.index(chosen.model)])
        expected = (64 * p + 1) / 65  # the estimator counts the decision's own draw: (hits + 1) / (64 + 1)
        errors.append(float(chosen.propensity or 0.0) - expected)
        sel.observe(
            RewardEvent(request_id=f"p{k}", context="medium", model=chosen.model, reward=0.6, ts=clock[0])
        )
    arr = np.array(errors)
    return {
        "decisions": decisions,
        "mean_signed_error": float(arr.mean()),
        "mean_abs_error": float(np.abs(arr).mean()),
        "reference_samples": reference_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=3000, help="decisions per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 decisions x 3 repeats, no propensity check")
    parser.add_argument(
        "--neighbourhood", action="store_true", help="the per-prompt selector instead (40 models)"
    )
    parser.add_argument("--rows", type=int, default=100_000, help="--neighbourhood: remembered rewards")
    parser.add_argument(
        "--memory-rows", type=int, default=0, help="--neighbourhood: also measure memory at this many"
    )
    args = parser.parse_args()
    if args.neighbourhood:
        neighbourhood_main(args.rows, args.memory_rows, args.decisions, 3 if args.quick else args.repeats)
        return
    decisions, repeats = (500, 3) if args.quick else (args.decisions, args.repeats)
    results: list[dict[str, Any]] = []
    rows = []
    for n in POOLS:
        for label, mode in MODES.items():
            timing = time_mode(n, mode, decisions, repeats)
            results.append({"models": n, "mode": label, **timing})
            rows.append(
                [
                    n,
                    label,
                    f"{timing['ms_per_decision']:.4f}",
                    f"{timing['ms_best_repeat']:.4f}",
                    f"{timing['p99_ms']:.4f}",
                ]
            )
    table = print_table(
        "Thompson selection cost per decision (ms)",
        ["models", "mode", "mean ms (median of repeats)", "best repeat", "p99 single ms"],
        rows,
    )
    at40 = [r for r in results if r["models"] == 40]
    worst40 = max(
        r["ms_per_decision"] for r in at40 if "half-life" not in r["mode"] and "before" not in r["mode"]
    )
    print(
        f"40 models, default config (no half-life), worst mode: {worst40:.4f} ms (target <= {TARGET_MS} ms)"
    )
    check = None if args.quick else propensity_check()
    if check:
        print(
            "propensity vs its expectation from 20k fresh draws (40 models): "
            f"mean signed error {check['mean_signed_error']:+.4f}, "
            f"mean abs error {check['mean_abs_error']:.4f}"
        )
    path = write_json(
        "bandit",
        {
            "decisions": decisions,
            "repeats": repeats,
            "target_ms_at_40": TARGET_MS,
            "worst_default_ms_at_40": worst40,
            "results": results,
            "propensity_check": check,
            "table_md": table,
        },
    )
    print(f"wrote {path}")


def neighbourhood_main(rows: int, memory_rows: int, decisions: int, repeats: int) -> None:
    from ops.bench import bandit_neighbourhood as nbh

    result = nbh.run(make_pool(40), rows, memory_rows, decisions, repeats)
    table_rows = [
        [name, f"{t['p50_ms']:.4f}", f"{t['p99_ms']:.4f}", f"{t['mean_ms']:.4f}"]
        for name, t in result["timing"].items()
    ]
    table = print_table(
        f"select() per decision, 40 models, {rows:,} remembered rewards (ms)",
        ["selector", "p50", "p99", "mean"],
        table_rows,
    )
    p50 = result["timing"]["neighbourhood"]["p50_ms"]
    print(
        f"neighbourhood p50 {p50:.4f} ms (target <= {nbh.TARGET_MS} ms), {result['ratio_p50']:.2f}x thompson"
    )
    pair = result["side_by_side"]
    print(
        "side by side, {} repeats: p50 {:.4f} ms vs {:.4f} ms before the speed-up ({:.3f}x); "
        "identical selections {}/{}".format(
            result["repeats"],
            pair["neighbourhood"]["p50_ms"],
            pair[nbh.BEFORE]["p50_ms"],
            result["ratio_p50_vs_before"],
            result["identical_selections"],
            result["decisions_compared"],
        )
    )
    print(f"memory at {rows:,} rows: {result['memory_bytes_at_rows'] / 1e6:.1f} MB")
    for label, m in result.get("memory", {}).items():
        print(
            f"{label}: {m['events']:,} events -> {m['rows_held']:,} rows, {m['nbytes'] / 1e6:.1f} MB "
            f"({m['bytes_per_row']:.0f} B/row), peak RSS {m['peak_rss_mb_after']:.0f} MB, "
            f"p50 {m['p50_ms']:.4f} ms"
        )
    path = write_json("bandit_neighbourhood", {**result, "table_md": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
