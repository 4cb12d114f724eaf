"""Can a better per-prompt quality estimate than kNN make Layer 2 beat ``knn_minilm`` in the replay?

    python -m ops.bench.knn_rivals [--data routerbench,split2,routellm] [--seeds 0,1,2]

An experiment only: the gateway and ``compass replay`` use none of it. Results go to stdout (markdown)
and ops/bench/results/knn_rivals.json; ~5 min for the three sets on 2 shared cores (cached embeddings).
Same data, stream orders, cost weight (0.3) and utility as ``compass replay``. Every estimator is
fitted on the TRAIN split, and each knob (ridge / logistic L2 strength, blend weight, kernel
temperature, shrinkage, the Thompson prior strength n0 and residual shrinkage n1) is chosen on the
held-out fifth of TRAIN that ``compass.replay.fit.choose_knn_k`` uses: by squared error for the
estimators, by simulated utility (3 stream orders over that fifth) for the Thompson variant.
The kNN baseline keeps its k exactly as the replay chooses it.

Rows: greedy policies (argmax estimate - w·cost; deterministic, s.d. 0), Thompson sampling with
the per-prompt prior Beta(m·n0, (1-m)·n0) around the blend estimate m plus an online per-cluster
residual, and kNN that also folds in the test stream's bandit feedback. ``paired s.e.`` is the
standard error of the per-prompt utility difference to kNN on the same prompts: the test set's
own sampling noise, which the s.d. over stream orders does not show.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from compass.replay.fit import _holdout, choose_clusters, choose_knn_k, kmeans, knn_estimates
from compass.replay.report import ReplayOptions, prepare
from compass.replay.simulate import stream_order
from ops.bench.common import write_json

COST_WEIGHT = 0.3
LAMBDAS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
BLEND = tuple(np.linspace(0.0, 1.0, 11).round(2))
TEMPS = (0.02, 0.05, 0.1, 0.2)
SHRINK = (0.0, 5.0, 20.0, 50.0)
N0 = (30.0, 100.0, 300.0, 1000.0)
N1 = (None, 200.0)  # residual shrinkage; None: no online update at all
MULTI_K = (25, 50, 100, 200, 400)


def _bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x.astype(np.float64), np.ones((len(x), 1))])


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> Callable[[np.ndarray], np.ndarray]:
    """Closed-form L2 ridge on [x, 1] (intercept not penalised), all models at once; clipped to [0, 1]."""
    xb = _bias(x)
    reg = lam * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(xb.T @ xb + reg, xb.T @ y)
    return lambda q: np.clip(_bias(q) @ w, 0.0, 1.0)


def logistic(x: np.ndarray, y: np.ndarray, lam: float, iters: int = 25) -> Callable[[np.ndarray], np.ndarray]:
    """L2 logistic regression per model (soft labels allowed), Newton steps from the base rate."""
    xb = _bias(x)
    d, models = xb.shape[1], y.shape[1]
    reg = lam * np.eye(d)
    reg[-1, -1] = 1e-6
    w = np.zeros((d, models))
    base = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3)
    w[-1] = np.log(base / (1 - base))
    for j in range(models):
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-(xb @ w[:, j])))
            grad = xb.T @ (p - y[:, j]) + reg @ w[:, j]
            hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
            step = np.linalg.solve(hess, grad)
            w[:, j] -= step
            if np.abs(step).max() < 1e-7:
                break
    return lambda q: 1.0 / (1.0 + np.exp(-(_bias(q) @ w)))


def knn_kernel(test: np.ndarray, train: np.ndarray, rewards: np.ndarray, k: int, temp: float) -> np.ndarray:
    """kNN with softmax(similarity / temp) weights over the k nearest train prompts."""
    out = np.empty((len(test), rewards.shape[1]))
    for s in range(0, len(test), 1024):
        sims = test[s : s + 1024] @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(sims, top, 1)
        w = np.exp((ts - ts.max(axis=1, keepdims=True)) / temp)
        out[s : s + 1024] = np.einsum("nk,nkm->nm", w / w.sum(axis=1, keepdims=True), rewards[top])
    return out


def group_means(keys: list[str], rewards: np.ndarray) -> dict[str, np.ndarray]:
    arr = np.array(keys)
    return {k: rewards[arr == k].mean(axis=0) for k in dict.fromkeys(keys)}


def shrunk_knn(
    knn: np.ndarray, keys: list[str], means: dict[str, np.ndarray], k: int, m0: float
) -> np.ndarray:
    """kNN mean with m0 pseudo-observations at the Layer 1 tier x task mean (global mean if unseen)."""
    fallback = np.mean(list(means.values()), axis=0)
    prior = np.stack([means.get(key, fallback) for key in keys])
    return (k * knn + m0 * prior) / (k + m0)


class Case:
    """One data set: train/test vectors, rewards, costs; the utility of every (prompt, model)."""

    def __init__(self, name: str) -> None:
        prep = prepare(ReplayOptions(dataset=name))
        data = prep["data"]
        self.name = name
        self.data, self.models = data, data.models
        self.cls_tr, self.cls_te = prep["train_cls"], prep["test_cls"]
        self.tr, self.te = prep["train_vecs"], prep["test_vecs"]
        self.rtr, self.rte = data.train.rewards, data.test.rewards
        self.keys_tr = [f"{c.tier}:{c.task_type or 'general'}" for c in prep["train_cls"]]
        self.keys_te = [f"{c.tier}:{c.task_type or 'general'}" for c in prep["test_cls"]]
        self.nc_tr = self._norm_expected(data, data.train.prompts)
        self.nc_te = self._norm_expected(data, data.test.prompts)
        self.u_tr = self._utility(data.train.rewards, data.train.costs)
        self.u_te = self._utility(data.test.rewards, data.test.costs)

    @staticmethod
    def _norm_expected(data: Any, prompts: list[str]) -> np.ndarray:
        """The cost term a policy sees (prices x approx tokens), as in ``Env.norm_cost``."""
        from compass.replay.data import approx_tokens

        comp = data.expected_completion_tokens
        cost = np.array([[s.expected_cost(approx_tokens(p), comp) for s in data.specs] for p in prompts])
        return cost / np.maximum(cost.max(axis=1, keepdims=True), 1e-300)

    @staticmethod
    def _utility(rewards: np.ndarray, costs: np.ndarray) -> np.ndarray:
        return rewards - COST_WEIGHT * costs / np.maximum(costs.max(axis=1, keepdims=True), 1e-300)


def greedy(estimate: np.ndarray, norm_cost: np.ndarray) -> np.ndarray:
    return np.argmax(estimate - COST_WEIGHT * norm_cost, axis=1)


def thompson(
    est: np.ndarray,
    labels: np.ndarray,
    rewards: np.ndarray,
    nc: np.ndarray,
    n0: float,
    n1: float | None,
    seed: int,
) -> np.ndarray:
    """Per-prompt prior Beta(m·n0, (1-m)·n0) around ``est``; m += the cluster's shrunk mean residual."""
    rng = np.random.default_rng([seed, 31])
    arms = np.empty(len(est), dtype=np.int64)
    resid = np.zeros((labels.max() + 1, est.shape[1]))
    count = np.zeros_like(resid)
    for i in stream_order(len(est), seed):
        c = labels[i]
        mean, strength = est[i], np.full(est.shape[1], n0)
        if n1 is not None:
            mean = mean + resid[c] / (count[c] + n1)
            strength = strength + count[c]
        mean = np.clip(mean, 1e-3, 1 - 1e-3)
        a = int(np.argmax(rng.beta(mean * strength, (1 - mean) * strength) - COST_WEIGHT * nc[i]))
        arms[i] = a
        resid[c, a] += rewards[i, a] - est[i, a]
        count[c, a] += 1
    return arms


def online_knn(case: Case, k: int, seed: int) -> np.ndarray:
    """Greedy kNN whose neighbours are the train prompts plus the test prompts already routed,
    each of those with only its chosen model's reward (bandit feedback). Arms by test prompt."""
    order, steps = online_knn_steps(case, k, seed, lambda i, arm, _step: float(case.rte[i, arm]))
    arms = np.empty_like(steps)
    arms[order] = steps
    return arms


def online_knn_steps(
    case: Case, k: int, seed: int, reward: Callable[[int, int, int], float]
) -> tuple[np.ndarray, np.ndarray]:
    """``online_knn`` with the observed reward given by ``reward(prompt, arm, step)``:
    (the stream order, the chosen arm per step)."""
    n, models = case.rte.shape
    hist = np.zeros((n, case.te.shape[1]), dtype=case.te.dtype)
    hr, ha = np.zeros(n), np.zeros(n, dtype=np.int64)
    order = stream_order(n, seed)
    arms = np.empty(n, dtype=np.int64)
    for t, i in enumerate(order):
        s_tr, s_h = case.tr @ case.te[i], hist[:t] @ case.te[i]
        est = np.empty(models)
        for a in range(models):
            mask = ha[:t] == a
            sims = np.concatenate([s_tr, s_h[mask]])
            rew = np.concatenate([case.rtr[:, a], hr[:t][mask]])
            est[a] = rew[np.argpartition(-sims, k - 1)[:k]].mean()
        arms[t] = a = int(np.argmax(est - COST_WEIGHT * case.nc_te[i]))
        hist[t], hr[t], ha[t] = case.te[i], reward(int(i), a, t), a
    return order, arms


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def evaluate(case: Case, seeds: tuple[int, ...]) -> dict[str, Any]:
    tr, te, rtr = case.tr, case.te, case.rtr
    fit, val = _holdout(len(tr))
    k = choose_knn_k(tr, rtr)  # the baseline's k, chosen exactly as the replay does
    knn_val, knn_te = knn_estimates(tr[val], tr[fit], rtr[fit], k), knn_estimates(te, tr, rtr, k)
    rows: list[dict[str, Any]] = []
    rows_u = np.arange(len(te))
    base_u = case.u_te[rows_u, greedy(knn_te, case.nc_te)]

    def add(name: str, knobs: str, val_err: float | None, arms_per_seed: list[np.ndarray]) -> None:
        utils = [float(case.u_te[rows_u, arms].mean()) for arms in arms_per_seed]
        diffs = [case.u_te[rows_u, arms] - base_u for arms in arms_per_seed]
        rows.append(
            {
                "estimator": name,
                "knobs (chosen on train)": knobs,
                "held-out MSE": val_err,
                "utility": float(np.mean(utils)),
                "sd": float(np.std(utils)),
                "delta_vs_knn": float(np.mean(utils)) - float(base_u.mean()),
                "paired_se": float(np.mean([d.std() / np.sqrt(len(d)) for d in diffs])),
            }
        )

    add("knn_minilm (baseline)", f"k={k}", mse(knn_val, rtr[val]), [greedy(knn_te, case.nc_te)])
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, fitter in (("probe_ridge", ridge), ("probe_logistic", logistic)):
        errs = {lam: mse(fitter(tr[fit], rtr[fit], lam)(tr[val]), rtr[val]) for lam in LAMBDAS}
        lam = min(errs, key=errs.__getitem__)
        fitted[name] = (fitter(tr[fit], rtr[fit], lam)(tr[val]), fitter(tr, rtr, lam)(te))
        add(name, f"lambda={lam:g}", errs[lam], [greedy(fitted[name][1], case.nc_te)])
    for name in ("probe_ridge", "probe_logistic"):
        pv, pt = fitted[name]
        errs = {w: mse(w * pv + (1 - w) * knn_val, rtr[val]) for w in BLEND}
        w = min(errs, key=errs.__getitem__)
        fitted[f"blend_{name}"] = (w * pv + (1 - w) * knn_val, w * pt + (1 - w) * knn_te)
        add(
            f"{name} + knn average",
            f"w_probe={w:g}",
            errs[w],
            [greedy(fitted[f"blend_{name}"][1], case.nc_te)],
        )
    errs = {t: mse(knn_kernel(tr[val], tr[fit], rtr[fit], k, t), rtr[val]) for t in TEMPS}
    temp = min(errs, key=errs.__getitem__)
    add(
        "knn distance-weighted",
        f"k={k} T={temp:g}",
        errs[temp],
        [greedy(knn_kernel(te, tr, rtr, k, temp), case.nc_te)],
    )
    keys_fit, keys_val = [case.keys_tr[i] for i in fit], [case.keys_tr[i] for i in val]
    means_fit, means_all = group_means(keys_fit, rtr[fit]), group_means(case.keys_tr, rtr)
    errs = {m0: mse(shrunk_knn(knn_val, keys_val, means_fit, k, m0), rtr[val]) for m0 in SHRINK}
    m0 = min(errs, key=errs.__getitem__)
    add(
        "knn shrunk to tier x task mean",
        f"k={k} m0={m0:g}",
        errs[m0],
        [greedy(shrunk_knn(knn_te, case.keys_te, means_all, k, m0), case.nc_te)],
    )
    ks = [kk for kk in MULTI_K if kk < len(fit)]
    multi_val = np.mean([knn_estimates(tr[val], tr[fit], rtr[fit], kk) for kk in ks], axis=0)
    multi_te = np.mean([knn_estimates(te, tr, rtr, kk) for kk in ks], axis=0)
    pv, pt = fitted["probe_logistic"]
    errs = {w: mse(w * pv + (1 - w) * multi_val, rtr[val]) for w in BLEND}
    w = min(errs, key=errs.__getitem__)
    add(
        "multi-k knn + logistic average",
        f"k={ks} w_probe={w:g}",
        errs[w],
        [greedy(w * pt + (1 - w) * multi_te, case.nc_te)],
    )

    # Thompson around the logistic+kNN average; clusters (k chosen on train) carry the online residual.
    blend_val, blend_te = fitted["blend_probe_logistic"]
    n_clusters = choose_clusters(tr, rtr)
    cen_fit, cen_all = kmeans(tr[fit], n_clusters), kmeans(tr, n_clusters)
    lab_val, lab_te = np.argmax(tr[val] @ cen_fit.T, axis=1), np.argmax(te @ cen_all.T, axis=1)
    val_u = case.u_tr[val]
    scores = {
        (n0, n1): np.mean(
            [
                val_u[
                    np.arange(len(val)), thompson(blend_val, lab_val, rtr[val], case.nc_tr[val], n0, n1, s)
                ].mean()
                for s in seeds
            ]
        )
        for n0 in N0
        for n1 in N1
    }
    n0, n1 = max(scores, key=scores.__getitem__)
    add(
        "thompson, prior = logistic+knn average, cluster residual",
        f"n0={n0:g} n1={n1} clusters={n_clusters}",
        None,
        [thompson(blend_te, lab_te, case.rte, case.nc_te, n0, n1, s) for s in seeds],
    )
    add("knn + test-stream bandit feedback (online)", f"k={k}", None, [online_knn(case, k, s) for s in seeds])
    return {"dataset": case.name, "train": len(tr), "test": len(te), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="routerbench,split2,routellm")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    results = []
    for name in args.data.split(","):
        start = time.perf_counter()
        res = evaluate(Case(name), seeds)
        results.append(res)
        print(
            f"\n#### {name} ({res['test']} test / {res['train']} train prompts; "
            f"{time.perf_counter() - start:.0f} s)\n"
        )
        print(
            "| estimator | knobs (chosen on train) | held-out MSE | utility w=0.3 | Δ vs kNN | paired s.e. |"
        )
        print("|---|---|---|---|---|---|")
        for r in res["rows"]:
            err = "" if r["held-out MSE"] is None else f"{r['held-out MSE']:.5f}"
            print(
                f"| {r['estimator']} | {r['knobs (chosen on train)']} | {err} "
                f"| {r['utility']:.4f} ± {r['sd']:.4f} "
                f"| {r['delta_vs_knn']:+.4f} | {r['paired_se']:.4f} |"
            )
    write_json("knn_rivals", {"cost_weight": COST_WEIGHT, "seeds": list(seeds), "results": results})


if __name__ == "__main__":
    main()
