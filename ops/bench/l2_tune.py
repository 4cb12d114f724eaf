"""Choosing the default neighbourhood selector's knobs on TRAIN data only (issue 15's targets).

    python -m ops.bench.l2_tune --data split2 --split val --weights 0.1,0.3 --drift 0.5 \
        --variant 'base={}' --variant 'hl={"half_life_s": 1000}'

``--split val``: the selector's train memory is 80 % of the TRAIN split and the stream is the other
20 % (``compass.replay.fit._holdout``, the fifth that picks kNN's k): the split the knobs are
chosen on. ``--split test``: memory = the whole TRAIN split, stream = the test split (what the
replay reports). Each variant runs trained (train rows as prior rows, k = kNN's held-out k) and,
with ``--cold``, without them. Printed per variant: utility minus greedy kNN's at each cost weight
(mean ± s.d. over stream orders) and, per ``--drift`` severity, the post-drift difference to static
kNN when kNN's favourite model loses that share of its answers from the midpoint (as in
``ops.bench.drift_replay``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from compass.replay.data import approx_tokens
from compass.replay.fit import _holdout, choose_knn_k, knn_estimates
from compass.replay.simulate import stream_order
from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.neighbourhood import NeighbourhoodSelector
from ops.bench.knn_rivals import Case


class Stream:
    """Memory rows and a stream of prompts (vectors, rewards, costs, classifications)."""

    def __init__(self, case: Case, split: str) -> None:
        data = case.data
        if split == "val":
            fit, val = _holdout(len(case.tr))
            self.mem_vecs, self.mem_rewards = case.tr[fit], case.rtr[fit]
            self.vecs, self.rewards, self.costs = case.tr[val], case.rtr[val], data.train.costs[val]
            self.cls = [case.cls_tr[i] for i in val]
            self.tokens = [approx_tokens(data.train.prompts[i]) for i in val]
            self.nc = case.nc_tr[val]
        else:
            self.mem_vecs, self.mem_rewards = case.tr, case.rtr
            self.vecs, self.rewards, self.costs = case.te, case.rte, data.test.costs
            self.cls, self.nc = case.cls_te, case.nc_te
            self.tokens = [approx_tokens(p) for p in data.test.prompts]
        self.case = case
        self.k = choose_knn_k(self.mem_vecs, self.mem_rewards)
        self.knn = knn_estimates(self.vecs, self.mem_vecs, self.mem_rewards, self.k)
        self.cnorm = self.costs / np.maximum(self.costs.max(axis=1, keepdims=True), 1e-300)

    def utility(self, w: float) -> np.ndarray:
        return self.rewards - w * self.cnorm

    def knn_arms(self, w: float) -> np.ndarray:
        return np.argmax(self.knn - w * self.nc, axis=1)


def run(
    s: Stream,
    opts: dict[str, Any],
    w: float,
    seed: int,
    trained: bool,
    drift: tuple[int, float] | None,
    held: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, arms, per-step utility under the drift if any) of one selector run; ``held``: a
    model without train rows that joins the pool at the midpoint."""
    case = s.case
    step = [0.0]
    options = {"seed": seed, "propensity_samples": 0, "cost_weight": w, **opts}
    if trained:
        options.setdefault("k", s.k)
    sel = NeighbourhoodSelector(options, case.data.specs, clock=lambda: step[0])
    cols = [j for j in range(len(case.models)) if j != held]
    if trained:
        sel.prior_rows(s.mem_vecs, [case.models[j] for j in cols], s.mem_rewards[:, cols])
    early = [case.data.specs[j] for j in cols]
    n = len(s.rewards)
    order = stream_order(n, seed)
    half = n // 2
    broken = np.zeros(n, bool)
    if drift is not None:
        broken = np.random.default_rng([int(drift[1] * 1000), 17]).random(n) < drift[1]
    arms = np.empty(n, np.int64)
    util = np.empty(n)
    u = s.utility(w)
    for t, i in enumerate(order):
        step[0] = float(t)
        ctx = SelectionContext(
            classification=s.cls[i],
            candidates=early if (held is not None and t < half) else case.data.specs,
            prompt_tokens=s.tokens[i],
            expected_completion_tokens=case.data.expected_completion_tokens,
            cost_weight=w,
            embedding=s.vecs[i],
        )
        a = case.models.index(sel.select(ctx).model)
        arms[t] = a
        r = float(s.rewards[i, a])
        util[t] = u[i, a]
        if drift is not None and t >= half and a == drift[0] and broken[i]:
            util[t] -= r
            r = 0.0
        sel.observe(
            RewardEvent(
                request_id=str(i),
                context=sel.context_of(s.cls[i]),
                model=case.models[a],
                reward=r,
                ts=float(t),
                source="offline",
                embedding=s.vecs[i],
            )
        )
    return order, arms, util


def onboarding(s: Stream, opts: dict[str, Any], seeds: list[int], trained: bool, window: int = 100) -> str:
    """kNN's favourite at w=0.3 joins at the midpoint without train rows: per ``window`` events
    after it joined, the share of the prompts kNN gives it that the selector routes to it."""
    knn = s.knn_arms(0.3)
    held = int(np.bincount(knn, minlength=len(s.case.models)).argmax())
    curves, steady, after = [], [], []
    for sd in seeds:
        for joined in (True, False):
            order, arms, util = run(s, opts, 0.3, sd, trained, None, held if joined else None)
            half = len(order) // 2
            if joined:
                after.append(util[half:].mean())
            mine = knn[order[half:]] == held
            got = arms[half:] == held
            if not joined:
                steady.append(got[mine].mean())
                continue
            steps = np.arange(len(order) - half)
            curves.append(
                [got[mine & (steps // window == b)].mean() for b in range(int(steps[-1] // window) + 1)]
            )
    curve = np.nanmean(np.array([c[: min(map(len, curves))] for c in curves]), axis=0)
    st = float(np.mean(steady))
    first = next((window * (b + 1) for b, x in enumerate(curve) if x >= 0.8 * st), None)
    head = f"onboard utility after {np.mean(after):.4f} steady {st:.2f} to80%steady {first} curve "
    return head + " ".join(f"{x:.2f}" for x in curve)


def knn_util(s: Stream, w: float, seed: int, drift: tuple[int, float] | None) -> np.ndarray:
    n = len(s.rewards)
    order = stream_order(n, seed)
    arms = s.knn_arms(w)[order]
    util = s.utility(w)[order, arms]
    if drift is not None:
        broken = np.random.default_rng([int(drift[1] * 1000), 17]).random(n) < drift[1]
        hit = (np.arange(n) >= n // 2) & (arms == drift[0]) & broken[order]
        util[hit] -= s.rewards[order[hit], arms[hit]]
    return util


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="split2")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--weights", default="0.3")
    p.add_argument("--drift", default="", help="severities, e.g. 0.5,1 (cost weight 0.3)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variant", action="append", default=[], help="name=json options")
    p.add_argument("--cold", action="store_true", help="also run without train rows")
    p.add_argument("--no-trained", action="store_true")
    p.add_argument("--onboard", action="store_true", help="also the new-model onboarding curve")
    a = p.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")]
    weights = [float(x) for x in a.weights.split(",")]
    severities = [float(x) for x in a.drift.split(",") if x]
    variants = [(v.split("=", 1)[0], json.loads(v.split("=", 1)[1])) for v in a.variant] or [("base", {})]
    for name in a.data.split(","):
        s = Stream(Case(name), a.split)
        fav = int(np.bincount(s.knn_arms(0.3), minlength=len(s.case.models)).argmax())
        print(f"## {name} ({a.split}: {len(s.rewards)} stream, {len(s.mem_rewards)} memory, k {s.k})")
        modes = ([] if a.no_trained else [True]) + ([False] if a.cold else [])
        for vname, opts in variants:
            for trained in modes:
                t0 = time.perf_counter()
                cells = []
                for w in weights:
                    base = s.utility(w)[np.arange(len(s.rewards)), s.knn_arms(w)].mean()
                    d = [run(s, opts, w, sd, trained, None)[2].mean() - base for sd in seeds]
                    cells.append(f"w{w:g} {np.mean(d):+.4f}±{np.std(d):.4f}")
                for sev in severities:
                    d = []
                    for sd in seeds:
                        util = run(s, opts, 0.3, sd, trained, (fav, sev))[2]
                        ref = knn_util(s, 0.3, sd, (fav, sev))
                        half = len(util) // 2
                        d.append(util[half:].mean() - ref[half:].mean())
                    cells.append(f"drift{sev:g} {np.mean(d):+.3f}")
                if a.onboard:
                    cells.append(onboarding(s, opts, seeds, trained))
                tag = "trained" if trained else "cold"
                took = f"{time.perf_counter() - t0:.0f}s"
                print(f"{vname:>14} {tag:7} | " + " | ".join(cells) + f" | {took}", flush=True)


if __name__ == "__main__":
    main()
