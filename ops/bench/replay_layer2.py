"""Two replays of the server's default Layer 2 (``neighbourhood``) that ``compass replay`` does not do.

    python -m ops.bench.replay_layer2 [--data routerbench,split2,routellm] [--seeds 0,1]

**Own history** (``compass train --history``): the first half of each test stream is served by
today's tier Thompson (cold, the gateway's default before this change), its rewards (bandit
feedback: the chosen model only) are written as reward rows into a real DuckDB file, with each
prompt's vector, through the gateway's own storage code; ``compass.replay.train.train_history``
builds memory and priors from that file, and a selector loaded from them serves the second half,
learning live. Compared on the second half with: tier Thompson going on (it learned the first half
itself), the cold default (which served the first half itself), and kNN / ``default_trained``
fitted on the TRAIN split. Cost weight 0.3; utility as in ``compass replay``.

**New-model onboarding**: the model an informed router picks most often (kNN fitted on the full
TRAIN split, w = 0.3; with 0/1 rewards the per-prompt oracle's "best model" is mostly which model
happened to be right, so the informed router stands in for the oracle) is held out of the pool
for the first half of the stream and added at the midpoint. Its curve is the share of the prompts
where the informed router picks it that the policy routes to it, per window of ``WINDOW``
feedback events after it joined. Two counts per policy: feedback events until that share first
reaches 80 % of the informed router's (which routes 100 % of them to it), and until it reaches
80 % of the share the same policy gives it when it was in the pool from the start (its steady
state). A kNN fitted on train cannot route a model it has no train rows for: it is not a row.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compass.replay.policies import KNN, Default, DefaultTrained, Env, Thompson, selection_context
from compass.replay.report import ReplayOptions, prepare
from compass.replay.simulate import stream_order, utility_matrix
from layers.bandit.base import RewardEvent
from layers.bandit.neighbourhood import NeighbourhoodSelector
from ops.bench.common import print_table, write_json

COST_WEIGHT = 0.3
WINDOW = 100


def step_policy(policy: Any, i: int, allowed: list[Any] | None) -> int:
    """One decision of a Thompson-family replay policy restricted to ``allowed`` candidates."""
    ctx = selection_context(policy.env, i, policy.cls[i])
    ctx.embedding = policy.vector(i)
    if allowed is not None:
        ctx.candidates = allowed
    return policy.index[policy.selector.select(ctx).model]


def history_replay(env: Env, seed: int, workdir: Path) -> dict[str, float]:
    import duckdb

    from compass.replay.train import train_history
    from compass.storage.migrations import migrate
    from compass.storage.rewards import insert_reward

    rewards = env.data.test.rewards
    util = utility_matrix(env)
    order = stream_order(len(rewards), seed)
    half = len(order) // 2
    first, second = order[:half], order[half:]
    logger = Thompson(env)  # today's gateway default
    db = workdir / f"history_{seed}.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    for step, i in enumerate(first):
        arm = logger.choose(int(i))
        logger.update(int(i), arm, float(rewards[i, arm]), step)
        event = RewardEvent(
            request_id=f"req-{i}",
            context=logger.contexts[i],
            model=env.data.models[arm],
            reward=float(rewards[i, arm]),
            ts=float(step),
            source="feedback",
            embedding=env.test_vecs[i],
        )
        insert_reward(con, event, "local", None)
    con.close()
    memory, priors = train_history(str(db))
    np.savez(workdir / f"memory_{seed}.npz", **memory)
    (workdir / f"priors_{seed}.json").write_text(__import__("json").dumps(priors))

    class FromHistory(Default):
        name = "default_from_own_history"

        def make_selector(self, opts: dict[str, Any]) -> Any:
            return NeighbourhoodSelector(
                {
                    **opts,
                    "memory_path": str(workdir / f"memory_{seed}.npz"),
                    "priors_path": str(workdir / f"priors_{seed}.json"),
                },
                self.env.data.specs,
                clock=lambda: self.step,
            )

    cold = Default(env)
    for step, i in enumerate(first):  # the cold default serves the first half itself
        arm = cold.choose(int(i))
        cold.update(int(i), arm, float(rewards[i, arm]), step)
    runners = {
        "thompson (served the 1st half, goes on)": logger,
        "default (served the 1st half, goes on)": cold,
        "default + compass train --history (1st half logged by thompson)": FromHistory(env),
        "default_trained (TRAIN split memory)": DefaultTrained(env),
        "knn_minilm (TRAIN split)": KNN(env),
    }
    out = {}
    for name, policy in runners.items():
        got = []
        for step, i in enumerate(second, start=half):
            arm = policy.choose(int(i))
            policy.update(int(i), arm, float(rewards[i, arm]), step)
            got.append(util[i, arm])
        out[name] = float(np.mean(got))
    out["_memory_rows"] = float(len(memory["vectors"]))
    return out


def onboarding(env: Env, seed: int) -> dict[str, Any]:
    data = env.data
    knn = KNN(env)
    oracle = np.argmax(knn.estimate - env.cost_weight * env.norm_cost, axis=1)
    held = int(np.bincount(oracle, minlength=len(data.models)).argmax())
    others = [s for j, s in enumerate(data.specs) if j != held]
    rewards = data.test.rewards
    order = stream_order(len(rewards), seed)
    half = len(order) // 2
    out: dict[str, Any] = {"held_model": data.models[held], "oracle_share": float(np.mean(oracle == held))}
    for cls in (Default, DefaultTrained, Thompson):
        curves = {}
        for mode in ("added at the midpoint", "in the pool from the start"):
            use: type[Thompson] = cls
            if cls is DefaultTrained and mode == "added at the midpoint":  # no train rows for it
                keep = [j for j in range(len(data.models)) if j != held]
                use = type("DefaultTrainedWithout", (DefaultTrained,), {"train_columns": keep})
            policy = use(env)
            hits = []
            for step, i in enumerate(order):
                allowed = others if (mode == "added at the midpoint" and step < half) else None
                arm = step_policy(policy, int(i), allowed)
                policy.update(int(i), arm, float(rewards[i, arm]), step)
                if step >= half and oracle[i] == held:
                    hits.append((step - half, arm == held))
            curves[mode] = hits
        out[cls.name] = summarise_curve(curves)
    return out


def summarise_curve(curves: dict[str, list[tuple[int, bool]]]) -> dict[str, Any]:
    late = curves["added at the midpoint"]
    steady = float(np.mean([h for _, h in curves["in the pool from the start"]])) if late else float("nan")
    events = np.array([e for e, _ in late])
    hit = np.array([h for _, h in late], dtype=float)
    bins = np.arange(0, (events.max() if len(events) else 0) + WINDOW, WINDOW)
    curve = []
    for lo in bins:
        sel = (events >= lo) & (events < lo + WINDOW)
        curve.append(float(hit[sel].mean()) if sel.any() else float("nan"))

    def first_at(target: float) -> float:
        for lo, share in zip(bins, curve, strict=True):
            if share == share and share >= target:
                return float(lo + WINDOW)
        return float("nan")

    return {
        "steady_share": steady,
        "curve_bins": bins.tolist(),
        "curve": curve,
        "events_to_80pct_oracle": first_at(0.8),
        "events_to_80pct_steady": first_at(0.8 * steady),
    }


def plot(results: list[dict[str, Any]], out_dir: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        ob = res["onboarding"]
        for name in ("default", "default_trained", "thompson"):
            c = ob[name]
            x = np.array(c["curve_bins"]) + WINDOW / 2
            ax.plot(x, c["curve"], marker="o", ms=2, lw=1, label=f"{name} (steady {c['steady_share']:.2f})")
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{res['dataset']}: {ob['held_model'].split('/')[-1]} joins mid-stream", fontsize=9)
        ax.set_xlabel("feedback events since it joined")
        ax.set_ylabel(f"share routed to it where it is best (per {WINDOW} events)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "onboarding.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="routerbench,split2,routellm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--plot", default="docs/replay/default")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="compass-l2-") as tmp:
        for name in args.data.split(","):
            prep = prepare(ReplayOptions(dataset=name))
            shared: dict[str, Any] = {}

            def env(seed: int, prep: dict[str, Any] = prep, shared: dict[str, Any] = shared) -> Env:
                return Env(
                    prep["data"],
                    prep["test_cls"],
                    prep["train_cls"],
                    prep["test_vecs"],
                    prep["train_vecs"],
                    COST_WEIGHT,
                    seed,
                    Path(tmp),
                    _cache=shared,
                )

            hist = [history_replay(env(s), s, Path(tmp)) for s in seeds]
            history = {k: float(np.mean([h[k] for h in hist])) for k in hist[0]}
            print_table(
                f"{name}: second half of the stream, utility at w={COST_WEIGHT} ({len(seeds)} orders)",
                ["policy", "utility"],
                [[k, f"{v:.4f}"] for k, v in history.items() if not k.startswith("_")],
            )
            boards = [onboarding(env(s), s) for s in seeds]
            ob = average_onboarding(boards)
            print_table(
                f"{name}: {ob['held_model']} held out, added at step {len(prep['data'].test) // 2} "
                f"(oracle share {ob['oracle_share']:.3f})",
                ["policy", "steady share", "events to 80% of oracle", "events to 80% of steady"],
                [
                    [
                        p,
                        f"{ob[p]['steady_share']:.3f}",
                        ob[p]["events_to_80pct_oracle"],
                        ob[p]["events_to_80pct_steady"],
                    ]
                    for p in ("default", "default_trained", "thompson")
                ],
            )
            results.append({"dataset": name, "history": history, "onboarding": ob})
    path = plot(results, Path(args.plot))
    print(f"plot: {path}" if path else "matplotlib not installed: no plot")
    print(f"wrote {write_json('replay_layer2', {'seeds': seeds, 'results': results})}")


def average_onboarding(boards: list[dict[str, Any]]) -> dict[str, Any]:
    """Curves averaged over stream orders (bin-wise), counts from the averaged curve."""
    out: dict[str, Any] = {"held_model": boards[0]["held_model"], "oracle_share": boards[0]["oracle_share"]}
    for name in ("default", "default_trained", "thompson"):
        parts = [b[name] for b in boards]
        n = min(len(p["curve"]) for p in parts)
        curve = np.nanmean([p["curve"][:n] for p in parts], axis=0)
        steady = float(np.mean([p["steady_share"] for p in parts]))
        bins = parts[0]["curve_bins"][:n]

        def first(target: float, curve: np.ndarray = curve, bins: list[int] = bins) -> float:
            for lo, share in zip(bins, curve, strict=True):
                if share >= target:
                    return float(lo + WINDOW)
            return float("nan")

        out[name] = {
            "steady_share": steady,
            "curve_bins": bins,
            "curve": curve.tolist(),
            "events_to_80pct_oracle": first(0.8),
            "events_to_80pct_steady": first(0.8 * steady),
        }
    return out


if __name__ == "__main__":
    main()
