"""Probe (not shipped): a separate "demand" head as a floor under the outcome head's tier.

    python -m ops.bench.classifier.demand_floor [--shared ../shared/data] [--floors 0.5 0.7 0.9 0.95]

A binary logistic head over the same features says whether a prompt is demanding: Arena-Hard
(both versions), MATH-500 levels 4-5 and the hand-written expert prompts are 1; AlpacaEval, GSM8K
and the hand-written chit-chat are 0 (MMLU, MT-Bench and MATH-500 levels 1-3 unused). Trained on
the build's train split only. A prompt the outcome head puts in ``simple`` moves to ``medium`` when
its demand probability is at or above the floor. Every floor is printed, none is picked here:
FLASK and WizardLM stay evaluation only. Result (2026-12-02): no floor keeps outcome accuracy
>= 0.69 while lowering FLASK's expert share in ``simple`` much, so the shipped heads are unchanged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ops.bench.classifier.difficulty import SHARED, load_sets
from ops.bench.common import print_table

POSITIVE = {"demand-expert", "arena-hard-v2", "arena-hard-v0.1"}
NEGATIVE = {"demand-chitchat", "alpaca-eval", "gsm8k"}


def demand_labels(records: list[dict], shared: Path) -> np.ndarray:
    """1 demanding, 0 light, -1 unused."""
    level = {
        row["problem"].strip(): int(row["level"])
        for row in map(json.loads, (shared / "math500" / "test.jsonl").open())
    }
    out = []
    for r in records:
        if r["source"] == "math500":
            out.append(1 if level.get(r["text"].strip(), 0) >= 4 else -1)
        else:
            out.append(1 if r["source"] in POSITIVE else 0 if r["source"] in NEGATIVE else -1)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--floors", type=float, nargs="*", default=[0.5, 0.7, 0.9, 0.95])
    parser.add_argument("--c", type=float, default=0.3)
    args = parser.parse_args()

    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression

    from layers.classifier.embedding import TIER_VALUE, EmbeddingHead, default_weights_path
    from layers.types import TIERS
    from ops.scripts.build_classifier_data import TRAIN_ONLY, embed_all, is_test, load_records

    records = load_records(args.shared)
    texts = [r["text"] for r in records]
    head = EmbeddingHead(default_weights_path())
    x = head.features(embed_all(texts), texts)
    y = demand_labels(records, args.shared)
    train = np.array([not is_test(r["text"]) or r["source"] in TRAIN_ONLY for r in records])
    rows = train & (y >= 0)
    weight = np.array([8.0 if r["source"] in TRAIN_ONLY else 1.0 for r in records])
    model = LogisticRegression(C=args.c, max_iter=3000, class_weight="balanced")
    model.fit(x[rows], y[rows], sample_weight=weight[rows])
    held = ~train & (y >= 0)
    print(f"demand head: held-out accuracy {np.mean(model.predict(x[held]) == y[held]):.3f} (n={held.sum()})")

    sets = load_sets(args.shared)

    def heads(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = head.features(embed_all(batch), batch)
        probs, _ = head.predict(embed_all(batch), batch)
        return probs, model.predict_proba(feats)[:, 1]

    for name in ("flask", "wizardlm"):
        if name in sets:
            probs, demand = heads(sets[name][0])
            rho_tier = spearmanr(probs @ TIER_VALUE, sets[name][1]).statistic
            rho_demand = spearmanr(demand, sets[name][1]).statistic
            print(f"{name}: Spearman complexity score {rho_tier:.3f}, demand probability {rho_demand:.3f}")

    table = []
    for floor in [None, *args.floors]:

        def tiers(batch: list[str], floor: float | None = floor) -> np.ndarray:
            probs, demand = heads(batch)
            tier = probs.argmax(1)
            return tier if floor is None else np.where((tier == 0) & (demand >= floor), 1, tier)

        row: list[object] = ["none (shipped)" if floor is None else floor]
        for name in ("expert_heldout", "flask_expert"):
            row.append(round(float(np.mean(tiers(sets[name]) == 0)), 3) if name in sets else "-")
        row.append(round(float(np.mean(tiers(sets["chitchat_heldout"]) == 0)), 3))
        texts_o, labels, _ = sets["outcome"]
        truth = np.array([TIERS.index(t) for t in labels])
        row.append(round(float(np.mean(tiers(texts_o) == truth)), 4))
        table.append(row)
    print_table(
        "demand floor under the outcome tier (held-out sets)",
        ["floor", "expert_heldout simple", "FLASK expert simple", "chit-chat simple", "outcome acc."],
        table,
    )


if __name__ == "__main__":
    main()
