"""One replay evaluation of a data set: all policies, seeds and cost weights; tables, JSON and plots."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compass.replay.data import ReplayData, load_dataset
from compass.replay.features import classify, embeddings
from compass.replay.policies import POLICIES, Env, Policy
from compass.replay.simulate import average, oracle, replay, routellm_metrics, score, single_models

DEFAULT_SWEEP = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
REPORT_COST_WEIGHT = 0.3  # the "balanced" preset: the headline table and the regret plot
TRAIN_NOTE = (
    "offline knowledge (model tiers and prices, kNN neighbours, clusters, fitted priors, and the k "
    "of kNN and of the clusters) comes from the TRAIN split only; the test split is only replayed"
)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ReplayOptions:
    dataset: str = "routerbench"
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    cost_weights: tuple[float, ...] = DEFAULT_SWEEP
    report_cost_weight: float = REPORT_COST_WEIGHT
    classifier: str = "embedding"
    classifier_options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None  # test prompts (seeded subset) for quick runs
    policies: tuple[str, ...] = ()  # empty: all


def prepare(opts: ReplayOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Load, embed (cached) and classify; returns the pieces every policy run shares."""
    data: ReplayData = load_dataset(opts.dataset, opts.data_dir)
    if opts.limit is not None and opts.limit < len(data.test):
        pick = np.sort(np.random.default_rng(12345).permutation(len(data.test))[: opts.limit])
        data.test = data.test.subset(pick)
    train_vecs, test_vecs, source = embeddings(
        data, data.name, (lambda done, total: progress("embed", done, total)) if progress else None
    )
    texts = data.train.prompts + data.test.prompts
    cls, used = classify(
        texts, np.concatenate([train_vecs, test_vecs]), opts.classifier, opts.classifier_options
    )
    return {
        "data": data,
        "train_vecs": train_vecs,
        "test_vecs": test_vecs,
        "embeddings": source,
        "train_cls": cls[: len(data.train)],
        "test_cls": cls[len(data.train) :],
        "classifier": used,
    }


def chosen_policies(names: tuple[str, ...]) -> list[type[Policy]]:
    if not names:
        return POLICIES
    known = {p.name: p for p in POLICIES}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown policies {missing}; known: {', '.join(known)}")
    return [known[n] for n in names]


def evaluate(opts: ReplayOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run everything; returns a result with the regret curves as arrays (see ``jsonable``)."""
    prep = prepare(opts, progress)
    data: ReplayData = prep["data"]
    policies = chosen_policies(opts.policies)
    weights = sorted(set(opts.cost_weights) | {opts.report_cost_weight})
    jobs = [(p, w) for p in policies for w in (weights if p.cost_aware else [opts.report_cost_weight])]
    total = len(jobs) * len(opts.seeds) * len(data.test)
    shared: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress("replay", done[0], total)

    with tempfile.TemporaryDirectory(prefix="compass-replay-") as workdir:

        def env_for(weight: float, seed: int) -> Env:
            return Env(
                data,
                prep["test_cls"],
                prep["train_cls"],
                prep["test_vecs"],
                prep["train_vecs"],
                weight,
                seed,
                Path(workdir),
                _cache=shared,
            )

        for policy, weight in jobs:
            per_seed = [score(replay(policy, env := env_for(weight, seed), tick), env) for seed in opts.seeds]
            row = average(per_seed)
            row["uses_train"] = policy.uses_train
            row["cost_aware"] = policy.cost_aware
            results.append(row)
        head_env = env_for(opts.report_cost_weight, opts.seeds[0])
    tiers = {t: sum(c.tier == t for c in prep["test_cls"]) for t in ("simple", "medium", "complex")}
    out: dict[str, Any] = {
        "dataset": data.name,
        "train_prompts": len(data.train),
        "test_prompts": len(data.test),
        "limit": opts.limit,
        "models": [
            {"name": s.name, "tier": s.tier, "train_quality": s.rank, "usd_per_mtok": s.input_price_per_mtok}
            for s in data.specs
        ],
        "classifier": prep["classifier"],
        "embeddings": prep["embeddings"],
        "test_tiers": tiers,
        "fitted_on_train": {k: shared[k] for k in ("knn_k", "clusters_k") if k in shared},
        "seeds": list(opts.seeds),
        "report_cost_weight": opts.report_cost_weight,
        "notes": [
            *data.notes,
            TRAIN_NOTE,
            "policies see only the chosen model's reward (bandit feedback), test prompts in a seeded random "
            "order; figures are means over the seeds",
            "utility = reward - cost_weight x cost / (most expensive model's cost on that prompt)",
        ],
        "single_models": single_models(head_env),
        "oracle": oracle(head_env),
        "runs": results,
    }
    if data.strong_weak:
        out["routellm"] = routellm_table(results, data)
    return out


def routellm_table(results: list[dict[str, Any]], data: ReplayData) -> dict[str, Any]:
    """APGR and CPT per cost-aware policy over its cost-weight sweep, per benchmark and overall."""
    strong, weak = data.strong_weak or ("", "")
    s, w = data.models.index(strong), data.models.index(weak)
    tasks = np.array(data.test.tasks)
    scopes = {"all": np.ones(len(tasks), bool), **{t: tasks == t for t in dict.fromkeys(data.test.tasks)}}
    table: dict[str, Any] = {}
    for scope, mask in scopes.items():
        weak_acc = float(data.test.rewards[mask, w].mean())
        strong_acc = float(data.test.rewards[mask, s].mean())
        rows: dict[str, Any] = {}
        for name in dict.fromkeys(r["policy"] for r in results if r["cost_aware"]):
            runs = [r for r in results if r["policy"] == name]
            if scope == "all":
                points = [(r["strong_pct"], r["accuracy"]) for r in runs]
            else:
                points = [(r["by_task"][scope]["strong_pct"], r["by_task"][scope]["accuracy"]) for r in runs]
            rows[name] = routellm_metrics(points, weak_acc, strong_acc)
        # RouteLLM's random router: strong with probability p, expected accuracy is the linear mix.
        mix = [(p * 100, (1 - p) * weak_acc + p * strong_acc) for p in np.linspace(0, 1, 11)]
        rows["random (expected)"] = routellm_metrics(mix, weak_acc, strong_acc)
        table[scope] = {
            "n": int(mask.sum()),
            "weak_accuracy": weak_acc,
            "strong_accuracy": strong_acc,
            "metrics": rows,
        }
    return {
        "strong": strong,
        "weak": weak,
        "by_scope": table,
        "source": "definitions of lm-sys/RouteLLM routellm/evals/evaluate.py (APGR, CPT); "
        "points = the policy's cost_weight sweep, closed with the 0% and 100% strong extremes",
    }


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """Regret curves reduced to their final value (the plots carry the curves)."""
    runs = []
    for r in result["runs"]:
        row = {k: v for k, v in r.items() if not k.startswith("regret")}
        row["regret_oracle"] = float(r["regret_oracle"][-1])
        row["regret_best_single"] = float(r["regret_best_single"][-1])
        runs.append(row)
    return {**result, "runs": runs}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The tables of one data set as Markdown (headline, single models, frontier, RouteLLM metrics)."""
    w = result["report_cost_weight"]
    name = result["dataset"]
    lines = [
        f"### {name}: {result['test_prompts']} test prompts, {result['train_prompts']} train prompts",
        "",
    ]
    lines += [f"- {n}" for n in result["notes"]]
    lines += [
        f"- Layer 1 classifier: {result['classifier']}; embeddings: {result['embeddings']}",
        f"- chosen on train: {result['fitted_on_train']}; seeds: {result['seeds']}",
        "",
    ]
    strong = "strong_pct" in result["runs"][0]
    head = [
        "policy",
        "learns from train",
        "accuracy",
        "cost USD",
        "utility",
        "regret vs oracle",
        "regret vs best single",
    ] + (["strong %"] if strong else [])
    lines += [
        f"**At cost_weight {w}** (mean over seeds; regret = cumulative utility lost over the stream)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in sorted((r for r in result["runs"] if r["cost_weight"] == w), key=lambda r: -r["utility"]):
        regret_o = r["regret_oracle"][-1] if hasattr(r["regret_oracle"], "__len__") else r["regret_oracle"]
        regret_b = (
            r["regret_best_single"][-1]
            if hasattr(r["regret_best_single"], "__len__")
            else r["regret_best_single"]
        )
        cells = [
            r["policy"],
            "yes" if r["uses_train"] else "no",
            _fmt(r["accuracy"]),
            _fmt(r["cost_usd"], 4),
            f"{r['utility']:.4f} ± {r['utility_sd']:.4f}",
            _fmt(float(regret_o), 1),
            _fmt(float(regret_b), 1),
        ]
        if strong:
            cells.append(_fmt(r["strong_pct"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    o = result["oracle"]
    lines += ["", "| single model / bound | accuracy | cost USD | utility |", "|---|---|---|---|"]
    for m in result["single_models"]:
        lines.append(
            f"| {m['model']} | {_fmt(m['accuracy'])} | {_fmt(m['cost_usd'], 4)} | {m['utility']:.4f} |"
        )
    lines.append(
        f"| per-prompt oracle | {_fmt(o['accuracy'])} | {_fmt(o['cost_usd'], 4)} | {o['utility']:.4f} |"
    )
    weights = sorted({r["cost_weight"] for r in result["runs"] if r["cost_aware"]})
    if len(weights) > 1:
        lines += [
            "",
            "**Quality-cost frontier** (accuracy / cost USD per cost_weight)",
            "",
            "| policy | " + " | ".join(f"w={x:g}" for x in weights) + " |",
            "|" + "---|" * (len(weights) + 1),
        ]
        for policy in dict.fromkeys(r["policy"] for r in result["runs"] if r["cost_aware"]):
            by_w = {r["cost_weight"]: r for r in result["runs"] if r["policy"] == policy}
            cells = [
                f"{by_w[x]['accuracy']:.3f} / {_fmt(by_w[x]['cost_usd'], 3)}" if x in by_w else ""
                for x in weights
            ]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    if "routellm" in result:
        lines += [
            "",
            "**RouteLLM metrics** (strong = GPT-4-1106, weak = Mixtral-8x7B; APGR higher is better, "
            "CPT = % strong calls to reach 50%/80% of the quality gap, lower is better)",
            "",
            "| scope | n | weak / strong acc | policy | APGR | CPT(50%) | CPT(80%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for scope, block in result["routellm"]["by_scope"].items():
            for policy, m in block["metrics"].items():
                lines.append(
                    f"| {scope} | {block['n']} | {block['weak_accuracy']:.3f} / "
                    f"{block['strong_accuracy']:.3f}"
                    f" | {policy} | {m['APGR']:.3f} | {_fmt(m['CPT(50%)'], 1)} | {_fmt(m['CPT(80%)'], 1)} |"
                )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Cumulative regret at the report cost weight, and the quality-cost frontier (small PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["dataset"]
    w = result["report_cost_weight"]
    policies = list(dict.fromkeys(r["policy"] for r in result["runs"]))
    palette = [*plt.get_cmap("tab10").colors, "black"]
    colours = {p: palette[k % len(palette)] for k, p in enumerate(policies)}
    style = {p: "-" if "thompson" in p else "--" for p in policies}
    head = [r for r in result["runs"] if r["cost_weight"] == w]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in head:
        for ax, key in zip(axes, ("regret_oracle", "regret_best_single"), strict=True):
            curve = np.asarray(r[key])
            stride = max(1, len(curve) // 400)
            ax.plot(
                np.arange(len(curve))[::stride],
                curve[::stride],
                style[r["policy"]],
                color=colours[r["policy"]],
                lw=1.2,
                label=r["policy"],
            )
    axes[0].set_title(f"{name}: regret vs per-prompt oracle (w={w})", fontsize=9)
    axes[1].set_title(f"{name}: regret vs best single model (w={w})", fontsize=9)
    for ax in axes:
        ax.set_xlabel("test prompts seen", fontsize=8)
        ax.set_ylabel("cumulative regret (utility)", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    regret_path = out_dir / f"replay_{name}_regret.png"
    fig.savefig(regret_path, dpi=72)
    plt.close(fig)

    from matplotlib.ticker import NullFormatter

    strong = "strong_pct" in result["runs"][0]
    fig, axes = plt.subplots(1, 2 if strong else 1, figsize=(11 if strong else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for policy in policies:
        runs = sorted((r for r in result["runs"] if r["policy"] == policy), key=lambda r: r["cost_usd"])
        kw = {"marker": "o", "ms": 3, "lw": 1, "color": colours[policy], "label": policy}
        ax.plot([r["cost_usd"] for r in runs], [r["accuracy"] for r in runs], style[policy], **kw)
        if strong:
            runs.sort(key=lambda r: r["strong_pct"])
            xs, ys = [r["strong_pct"] for r in runs], [r["accuracy"] for r in runs]
            axes[0][1].plot(xs, ys, style[policy], **kw)
    for m in result["single_models"]:
        ax.scatter(m["cost_usd"], m["accuracy"], marker="x", color="black", s=16)
        ax.annotate(m["model"].split("/")[-1][:18], (m["cost_usd"], m["accuracy"]), fontsize=5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("total cost of the test stream (USD, log)", fontsize=8)
    ax.set_ylabel("accuracy (mean reward)", fontsize=8)
    ax.set_title(f"{name}: quality-cost frontier (cost_weight sweep; x = single models)", fontsize=9)
    ax.legend(fontsize=6)
    if strong:
        axes[0][1].set_xlabel("strong-model calls (%)", fontsize=8)
        axes[0][1].set_title(f"{name}: accuracy vs strong-model calls (RouteLLM's axes)", fontsize=9)
    for a in axes[0]:
        a.tick_params(labelsize=7)
    fig.tight_layout()
    frontier_path = out_dir / f"replay_{name}_frontier.png"
    fig.savefig(frontier_path, dpi=72)
    plt.close(fig)
    return [regret_path, frontier_path]


def write_outputs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``replay_<name>.json``, ``replay_<name>.md`` and the two PNGs under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["dataset"]
    json_path = out_dir / f"replay_{name}.json"
    json_path.write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")
    md_path = out_dir / f"replay_{name}.md"
    md_path.write_text(markdown(result), encoding="utf-8")
    return [json_path, md_path, *plot(result, out_dir)]
