"""Replay a test split through a policy with bandit feedback, and score the runs.

Utility of an answer is ``reward - cost_weight · cost / max cost among the models for that
prompt`` (recorded costs), the same trade-off the Thompson selector optimises. Regret is measured
in that utility against the per-prompt oracle and against the best single model in hindsight;
at cost_weight 0 it is plain quality regret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compass.replay.policies import Env, Policy


@dataclass
class Run:
    policy: str
    cost_weight: float
    seed: int
    order: np.ndarray  # test prompt index per step
    arms: np.ndarray  # chosen model per step


def stream_order(n: int, seed: int) -> np.ndarray:
    """The seeded random order the test prompts arrive in (the same for every policy of a seed)."""
    return np.random.default_rng([seed, 7919]).permutation(n)


def replay(policy_cls: type[Policy], env: Env, on_step: Callable[[int], None] | None = None) -> Run:
    """Stream the test split in a seeded random order; the policy sees only its own arm's reward."""
    rewards = env.data.test.rewards
    order = stream_order(len(rewards), env.seed)
    policy = policy_cls(env)
    arms = np.empty(len(order), dtype=np.int64)
    for step, i in enumerate(order):
        arm = policy.choose(int(i))
        arms[step] = arm
        policy.update(int(i), arm, float(rewards[i, arm]), step)
        if on_step is not None and step % 512 == 511:
            on_step(512)
    if on_step is not None:
        on_step(len(order) % 512)
    return Run(policy_cls.name, env.cost_weight, env.seed, order, arms)


def utility_matrix(env: Env) -> np.ndarray:
    costs = env.data.test.costs
    return env.data.test.rewards - env.cost_weight * costs / np.maximum(
        costs.max(axis=1, keepdims=True), 1e-300
    )


def score(run: Run, env: Env) -> dict[str, Any]:
    """Accuracy, cost, utility, model shares, per-task figures and regret curves of one run."""
    rewards = env.data.test.rewards[run.order]
    costs = env.data.test.costs[run.order]
    util = utility_matrix(env)[run.order]
    steps = np.arange(len(run.order))
    got = util[steps, run.arms]
    best_single = int(np.argmax(util.sum(axis=0)))
    models = env.data.models
    shares = np.bincount(run.arms, minlength=len(models)) / max(len(run.arms), 1)
    strong = models.index(env.data.strong_weak[0]) if env.data.strong_weak else None
    out: dict[str, Any] = {
        "policy": run.policy,
        "cost_weight": run.cost_weight,
        "seed": run.seed,
        "accuracy": float(rewards[steps, run.arms].mean()),
        "cost_usd": float(costs[steps, run.arms].sum()),
        "utility": float(got.mean()),
        "regret_oracle": np.cumsum(util.max(axis=1) - got),
        "regret_best_single": np.cumsum(util[:, best_single] - got),
        "shares": {m: float(s) for m, s in zip(models, shares, strict=True)},
    }
    if strong is not None:
        out["strong_pct"] = float(shares[strong] * 100)
    tasks = np.array(env.data.test.tasks)[run.order]
    by_task = {}
    for task in dict.fromkeys(tasks.tolist()):
        mask = tasks == task
        row = {"n": int(mask.sum()), "accuracy": float(rewards[steps[mask], run.arms[mask]].mean())}
        if strong is not None:
            row["strong_pct"] = float(np.mean(run.arms[mask] == strong) * 100)
        by_task[task] = row
    out["by_task"] = by_task
    return out


def average(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds (regret curves averaged step-wise), with the standard deviation across seeds."""
    first = scores[0]
    out: dict[str, Any] = {
        "policy": first["policy"],
        "cost_weight": first["cost_weight"],
        "seeds": len(scores),
    }
    for key in ("accuracy", "cost_usd", "utility", "strong_pct"):
        if key in first:
            values = np.array([s[key] for s in scores])
            out[key] = float(values.mean())
            out[f"{key}_sd"] = float(values.std())
    for key in ("regret_oracle", "regret_best_single"):
        out[key] = np.mean([s[key] for s in scores], axis=0)
    out["shares"] = {m: float(np.mean([s["shares"][m] for s in scores])) for m in first["shares"]}
    out["by_task"] = {
        task: {k: float(np.mean([s["by_task"][task][k] for s in scores])) for k in row}
        for task, row in first["by_task"].items()
    }
    return out


def single_models(env: Env) -> list[dict[str, Any]]:
    """Each model alone: the frontier's reference points."""
    test = env.data.test
    util = utility_matrix(env)
    return [
        {
            "model": m,
            "accuracy": float(test.rewards[:, j].mean()),
            "cost_usd": float(test.costs[:, j].sum()),
            "utility": float(util[:, j].mean()),
        }
        for j, m in enumerate(env.data.models)
    ]


def oracle(env: Env) -> dict[str, float]:
    """Per-prompt best utility (cheapest among equals): the upper bound."""
    util = utility_matrix(env)
    costs = env.data.test.costs
    best = util.max(axis=1, keepdims=True)
    arms = np.argmin(np.where(util >= best - 1e-12, costs, np.inf), axis=1)
    rows = np.arange(len(arms))
    return {
        "accuracy": float(env.data.test.rewards[rows, arms].mean()),
        "cost_usd": float(costs[rows, arms].sum()),
        "utility": float(util[rows, arms].mean()),
    }


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0) if len(x) > 1 else 0.0


def _first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest x at which the piecewise-linear curve (x sorted) reaches ``target``; NaN if never."""
    if y[0] >= target:
        return float(x[0])
    for j in range(1, len(x)):
        if y[j] >= target:
            return float(x[j - 1] + (target - y[j - 1]) / (y[j] - y[j - 1]) * (x[j] - x[j - 1]))
    return float("nan")


def routellm_metrics(
    points: list[tuple[float, float]], weak_acc: float, strong_acc: float, anchor: bool = True
) -> dict[str, Any]:
    """APGR and CPT(50%/80%) with the definitions of RouteLLM's ``routellm/evals/evaluate.py``.

    ``points`` are (strong-model call %, accuracy) over a sweep of the router's knob. AUC is the
    trapezoid of accuracy over strong%/100; APGR = (AUC - weak·span) / (strong·span - weak·span)
    over the same x span; CPT(p) = strong% at which accuracy first reaches weak + p·(strong - weak).
    RouteLLM's thresholds run from 'every call strong' to 'no call strong', so with ``anchor``
    the sweep is closed with (0 %, weak) and (100 %, strong), the knob's two extremes. RouteLLM
    reads CPT with ``np.interp`` of accuracy → strong%, which is the same first crossing when
    accuracy rises with strong% (and undefined otherwise).
    """
    pts = sorted(points)
    if anchor:
        pts = sorted({(0.0, weak_acc), *pts, (100.0, strong_acc)})
    x = np.array([p[0] for p in pts]) / 100.0
    y = np.array([p[1] for p in pts])
    auc = _trapezoid(y, x)
    span = float(x[-1] - x[0])
    gap = (strong_acc - weak_acc) * span
    out: dict[str, Any] = {
        "APGR": (auc - weak_acc * span) / gap if gap else float("nan"),
        "AUC": auc,
        "points": len(pts),
    }
    for pct in (0.5, 0.8):
        out[f"CPT({int(pct * 100)}%)"] = _first_crossing(x * 100, y, weak_acc + pct * (strong_acc - weak_acc))
    return out
