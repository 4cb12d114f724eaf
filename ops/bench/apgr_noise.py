"""How much of an APGR gap is sampling noise: a prompt bootstrap of RouteLLM's APGR (issue 15).

    python -m ops.bench.apgr_noise --seeds 0,1 --boot 1000

On routellm's test half, the trained neighbourhood selector (the replay's ``default_trained``:
the train half as prior rows, k = kNN's held-out k) and greedy kNN are run over the replay's
cost-weight sweep; each keeps its per-prompt choices. The bootstrap resamples each benchmark's
prompts with replacement and recomputes, from those choices, every sweep point (strong-call
share, accuracy; the selector's averaged over the stream orders), the weak and strong accuracy
and APGR (``compass.replay.simulate.routellm_metrics``, the replay's definition). It does not
re-run the selector per resample, so it measures which prompts the half happens to hold, not
the stream order (the orders' spread is printed beside it).
"""

from __future__ import annotations

import argparse

import numpy as np

from compass.replay.simulate import routellm_metrics
from ops.bench.knn_rivals import Case
from ops.bench.l2_tune import Stream, run

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)  # the replay's --cost-weights sweep


def apgr(choices: list[np.ndarray], rewards: np.ndarray, strong: int, weak: int, idx: np.ndarray) -> float:
    """APGR of one policy's sweep (``choices[w]``: (orders, prompts) arms) on prompts ``idx``."""
    sub = rewards[idx]  # once per resample, not once per sweep point
    points = []
    for arms in choices:
        picked = arms[:, idx]
        acc = np.take_along_axis(sub[None, :, :], picked[:, :, None], axis=2)[..., 0]
        points.append((100.0 * float((picked == strong).mean()), float(acc.mean())))
    return float(routellm_metrics(points, sub[:, weak].mean(), sub[:, strong].mean())["APGR"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--boot", type=int, default=1000)
    a = p.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")]
    s = Stream(Case("routellm"), "test")
    data = s.case.data
    assert data.strong_weak is not None
    strong, weak = (data.models.index(m) for m in data.strong_weak)
    selector, knn = [], []
    for w in WEIGHTS:
        per_order = []
        for seed in seeds:
            order, arms, _ = run(s, {}, w, seed, True, None)
            by_prompt = np.empty_like(arms)
            by_prompt[order] = arms
            per_order.append(by_prompt)
        selector.append(np.stack(per_order))
        knn.append(s.knn_arms(w)[None, :])
    tasks = np.array(data.test.tasks)
    rng = np.random.default_rng(0)
    print(f"routellm test half, {len(seeds)} orders, {a.boot} resamples of each benchmark's prompts")
    print("| benchmark | n | default_trained APGR | by order | kNN APGR | difference | P(APGR ≥ 0.62) |")
    print("|---|---|---|---|---|---|---|")
    for task in ("mmlu", "gsm8k"):
        idx = np.flatnonzero(tasks == task)
        point = apgr(selector, s.rewards, strong, weak, idx)
        orders = [
            apgr([c[i : i + 1] for c in selector], s.rewards, strong, weak, idx) for i in range(len(seeds))
        ]
        point_knn = apgr(knn, s.rewards, strong, weak, idx)
        boot, diff = [], []
        for _ in range(a.boot):
            pick = rng.choice(idx, len(idx))
            x = apgr(selector, s.rewards, strong, weak, pick)
            boot.append(x)
            diff.append(x - apgr(knn, s.rewards, strong, weak, pick))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        dlo, dhi = np.percentile(diff, [2.5, 97.5])
        print(
            f"| {task} | {len(idx)} | {point:.3f} ± {np.std(boot):.3f} (95 % {lo:.3f} to {hi:.3f}) | "
            + " / ".join(f"{o:.3f}" for o in orders)
            + f" | {point_knn:.3f} | {point - point_knn:+.3f} (95 % {dlo:+.3f} to {dhi:+.3f}) | "
            f"{np.mean(np.array(boot) >= 0.62):.2f} |"
        )


if __name__ == "__main__":
    main()
