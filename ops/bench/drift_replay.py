"""When a model silently gets worse mid-stream: does Layer 2 recover where an offline kNN router cannot?

    python -m ops.bench.drift_replay [--data routerbench,split2,routellm] [--seeds 0,1,2]
                                     [--severity 0.5,1.0]

The i.i.d. replay (``compass replay``, ``ops.bench.knn_rivals``) is the best case for a kNN router
fitted on train: the test stream looks like the train split for ever. Production does not: a
provider swaps a model for a cheaper quantisation, a prompt template breaks, an endpoint starts
returning junk. This experiment replays the same test splits, in the same seeded orders, with the
same cost weight (0.3) and utility, but from the middle of the stream the model the kNN router
relies on most (its most chosen model over the undisturbed stream) regresses: a fixed random
``severity`` share of its answers score 0 from then on. Rewards of every other model, all costs,
and everything before the midpoint are unchanged. Nothing here is fitted on test data: kNN and
the priors come from TRAIN exactly as in ``compass replay``.

Policies:
- ``knn_minilm``: the replay's kNN baseline (k chosen on train), fitted once, never updated.
- ``knn_online``: kNN whose neighbours also include the test prompts already routed, each with only
  its chosen model's reward (bandit feedback), as in ``ops.bench.knn_rivals``.
- ``thompson_tier_task_fitted``: Layer 2 as ``compass train --context tier_task`` + ``compass replay``
  run it (uncapped priors, no half-life).
- ``... cap C, half-life H``: the same, with the train priors capped at C pseudo-observations per
  arm (``compass train --cap C``) and the ``half_life_s`` option (here in stream steps). The whole
  grid is printed, not a chosen cell.
- ``knn_told`` (reference, not a router): kNN whose estimate for the regressed model is scaled by
  (1 - severity) from the midpoint, i.e. a kNN router re-fitted the moment the drift happened.

Columns: mean utility before the drift, after it, and over the last quarter (recovery), and the
post-drift difference to ``knn_minilm`` with its paired standard error (per-prompt differences on
the same post-drift prompts of each stream order; the orders overlap, so s.e. is not divided by
the number of orders). JSON goes to ops/bench/results/drift_replay.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from compass.replay.data import approx_tokens
from compass.replay.fit import choose_knn_k, fit_context_priors, knn_estimates
from compass.replay.simulate import stream_order
from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.neighbourhood import NeighbourhoodSelector
from layers.bandit.thompson import ThompsonSelector
from ops.bench.common import write_json
from ops.bench.knn_rivals import COST_WEIGHT, Case, greedy, online_knn_steps

CAPS = (None, 100.0, 30.0)
ONLY: list[str] = []  # --only: policy name prefixes
HALF_LIVES = (None, 1000.0, 300.0)


class Drift:
    """The regressed model, the step it regresses at, and which of its answers go wrong."""

    def __init__(self, case: Case, model: int, severity: float) -> None:
        n = len(case.rte)
        self.model, self.severity, self.start = model, severity, n // 2
        self.broken = np.random.default_rng([int(severity * 1000), 17]).random(n) < severity

    def reward(self, case: Case, i: int, arm: int, step: int) -> float:
        if step >= self.start and arm == self.model and self.broken[i]:
            return 0.0
        return float(case.rte[i, arm])

    def utility(self, case: Case, order: np.ndarray, arms: np.ndarray) -> np.ndarray:
        """Per-step utility of a run under the drift (the cost term is unchanged)."""
        util = case.u_te[order, arms].copy()
        steps = np.arange(len(order))
        hit = (steps >= self.start) & (arms == self.model) & self.broken[order]
        util[hit] -= case.rte[order[hit], arms[hit]]
        return util


def run_knn(
    est: np.ndarray, case: Case, drift: Drift, seed: int, told: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    order = stream_order(len(est), seed)
    arms = greedy(est, case.nc_te)[order]
    if told:
        scaled = est.copy()
        scaled[:, drift.model] *= 1.0 - drift.severity
        arms[drift.start :] = greedy(scaled, case.nc_te)[order[drift.start :]]
    return order, arms


def run_knn_online(case: Case, k: int, drift: Drift, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return online_knn_steps(case, k, seed, lambda i, arm, step: drift.reward(case, i, arm, step))


def run_default(
    case: Case, trained: bool, half_life: float | None, drift: Drift, seed: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The server's default selector (``neighbourhood``), cold or with the TRAIN split as memory."""
    step = [0.0]
    options = {"seed": seed, "propensity_samples": 0, "cost_weight": COST_WEIGHT, "half_life_s": half_life}
    if trained:
        options["k"] = k
    selector = NeighbourhoodSelector(options, case.data.specs, clock=lambda: step[0])
    if trained:
        selector.prior_rows(case.tr, case.models, case.rtr)
    return run_selector(case, selector, drift, seed, step, vectors=True)


def run_thompson(
    case: Case, priors_path: str, half_life: float | None, drift: Drift, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    step = [0.0]
    selector = ThompsonSelector(
        {
            "context": "tier_task",
            "priors_path": priors_path,
            "half_life_s": half_life,
            "seed": seed,
            "propensity_samples": 0,
            "cost_weight": COST_WEIGHT,
        },
        case.data.specs,
        clock=lambda: step[0],
    )
    return run_selector(case, selector, drift, seed, step)


def run_selector(
    case: Case, selector: ThompsonSelector, drift: Drift, seed: int, step: list[float], vectors: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    index = {m: j for j, m in enumerate(case.models)}
    contexts = [selector.context_of(c) for c in case.cls_te]
    tokens = [approx_tokens(p) for p in case.data.test.prompts]
    order = stream_order(len(case.rte), seed)
    arms = np.empty(len(order), dtype=np.int64)
    for t, i in enumerate(order):
        step[0] = float(t)
        ctx = SelectionContext(
            classification=case.cls_te[i],
            candidates=case.data.specs,
            prompt_tokens=tokens[i],
            expected_completion_tokens=case.data.expected_completion_tokens,
            cost_weight=COST_WEIGHT,
            embedding=case.te[i] if vectors else None,
        )
        arms[t] = a = index[selector.select(ctx).model]
        selector.observe(
            RewardEvent(
                request_id=str(i),
                context=contexts[i],
                model=case.models[a],
                reward=drift.reward(case, int(i), a, t),
                ts=float(t),
                source="offline",
                embedding=case.te[i] if vectors else None,
            )
        )
    return order, arms


def evaluate(
    case: Case, seeds: tuple[int, ...], severities: tuple[float, ...], workdir: Path
) -> dict[str, Any]:
    k = choose_knn_k(case.tr, case.rtr)
    est = knn_estimates(case.te, case.tr, case.rtr, k)
    favourite = int(np.bincount(greedy(est, case.nc_te), minlength=len(case.models)).argmax())
    priors: dict[float | None, str] = {}
    for cap in CAPS:
        path = workdir / f"{case.name}_priors_{cap}.json"
        path.write_text(json.dumps(fit_context_priors(case.cls_tr, case.rtr, case.models, "tier_task", cap)))
        priors[cap] = str(path)
    out: dict[str, Any] = {
        "dataset": case.name,
        "test": len(case.rte),
        "knn_k": k,
        "regressed_model": case.models[favourite],
        "runs": [],
    }
    for severity in severities:
        drift = Drift(case, favourite, severity)
        runners: dict[str, Any] = {
            "knn_minilm": lambda s, d=drift: run_knn(est, case, d, s),
            "knn_online": lambda s, d=drift: run_knn_online(case, k, d, s),
        }
        for cap in CAPS:
            for half in HALF_LIVES:
                name = (
                    "thompson_tier_task_fitted"
                    if cap is None and half is None
                    else (f"thompson_tier_task_fitted, cap {cap or '-'}, half-life {half or '-'}")
                )
                runners[name] = lambda s, d=drift, p=priors[cap], h=half: run_thompson(case, p, h, d, s)
        for half in HALF_LIVES:
            tail = f", half-life {half:g}" if half else ""
            runners[f"default{tail}"] = lambda s, d=drift, h=half: run_default(case, False, h, d, s, k)
            runners[f"default_trained{tail}"] = lambda s, d=drift, h=half: run_default(case, True, h, d, s, k)
        runners["knn_told (reference: re-fitted at the drift)"] = lambda s, d=drift: run_knn(
            est, case, d, s, told=True
        )
        base: dict[int, np.ndarray] = {}
        rows = []
        for name, runner in runners.items():
            if ONLY and name != "knn_minilm" and not any(name.startswith(p) for p in ONLY):
                continue
            pre, post, last, diffs, ses = [], [], [], [], []
            for seed in seeds:
                order, arms = runner(seed)
                util = drift.utility(case, order, arms)
                base.setdefault(seed, util)
                pre.append(util[: drift.start].mean())
                post.append(util[drift.start :].mean())
                last.append(util[-len(util) // 4 :].mean())
                d = util[drift.start :] - base[seed][drift.start :]
                diffs.append(d.mean())
                ses.append(d.std(ddof=1) / np.sqrt(len(d)))
            rows.append(
                {
                    "policy": name,
                    "before": float(np.mean(pre)),
                    "after": float(np.mean(post)),
                    "after_sd": float(np.std(post)),
                    "last_quarter": float(np.mean(last)),
                    "delta_after_vs_knn": float(np.mean(diffs)),
                    "paired_se": float(np.mean(ses)),
                }
            )
        out["runs"].append({"severity": severity, "rows": rows})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="routerbench,split2,routellm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--severity", default="0.5,1.0")
    parser.add_argument(
        "--only", default="", help="comma-separated policy name prefixes to run (+ knn_minilm)"
    )
    args = parser.parse_args()
    ONLY[:] = [p for p in args.only.split(",") if p]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    severities = tuple(float(s) for s in args.severity.split(","))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data.split(","):
            start = time.perf_counter()
            res = evaluate(Case(name), seeds, severities, Path(tmp))
            results.append(res)
            for run in res["runs"]:
                print(
                    f"\n#### {name}: {res['regressed_model']} loses {run['severity']:.0%} of its answers "
                    f"from step {res['test'] // 2} of {res['test']} ({time.perf_counter() - start:.0f} s)\n"
                )
                print("| policy | before | after | last quarter | Δ after vs kNN (paired s.e.) |")
                print("|---|---|---|---|---|")
                for r in run["rows"]:
                    print(
                        f"| {r['policy']} | {r['before']:.4f} | {r['after']:.4f} ± {r['after_sd']:.4f} "
                        f"| {r['last_quarter']:.4f} | {r['delta_after_vs_knn']:+.4f} ({r['paired_se']:.4f}) |"
                    )
    write_json("drift_replay", {"cost_weight": COST_WEIGHT, "seeds": list(seeds), "results": results})


if __name__ == "__main__":
    main()
