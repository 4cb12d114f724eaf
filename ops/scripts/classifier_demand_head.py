"""The demand head of ``data/classifier/``: does a prompt demand more than a cheap model?

Built by ``ops/scripts/build_classifier_data.py`` on its train split only. Labels say what a prompt
asks for, not which model answered it:

- demanding (1): Arena-Hard v0.1 and v2.0 (selected by LMArena as hard), MATH-500 levels 4-5, the
  hand-written expert prompts (``classifier_demand.EXPERT``);
- light (0): the hand-written chit-chat, AlpacaEval's everyday instructions, GSM8K (grade school),
  and the MMLU items that Mixtral answered (closed multiple-choice items a cheap model gets right);
- unused: the other MMLU items, MT-Bench, MATH-500 levels 1-3.

Features: the tier head's (MiniLM + length cues) plus ``choice_feature`` (lettered options), so the
head can tell a closed exam item from an open-ended request on the same topic.

The floor is calibrated on the train split alone (5-fold out-of-fold probabilities of both heads):
the lowest floor on a 0.05 grid whose out-of-fold routing-outcome tier accuracy stays within
``MAX_DROP`` of no floor. FLASK, WizardLM, the fresh and the development prompt files and the test
split play no part in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

POSITIVE = {"demand-expert", "arena-hard-v2", "arena-hard-v0.1"}
NEGATIVE = {"demand-chitchat", "alpaca-eval", "gsm8k"}
DEMAND_C = 1.0
MAX_DROP = 0.005
FLOOR_GRID = tuple(round(f, 2) for f in np.arange(0.30, 0.96, 0.05))


def demand_labels(records: list[dict[str, Any]], shared: Path) -> np.ndarray:
    """1 demanding, 0 light, -1 unused."""
    level = {
        row["problem"].strip(): int(row["level"])
        for row in map(json.loads, (shared / "math500" / "test.jsonl").open())
    }
    out = []
    for r in records:
        if r["source"] == "math500":
            out.append(1 if level.get(r["text"].strip(), 0) >= 4 else -1)
        elif r["source"] == "mmlu":
            out.append(0 if r["tier"] == "simple" else -1)
        else:
            out.append(1 if r["source"] in POSITIVE else 0 if r["source"] in NEGATIVE else -1)
    return np.array(out)


def demand_features(x: np.ndarray, texts: list[str]) -> np.ndarray:
    from layers.classifier.embedding import choice_feature

    return np.hstack([x, np.array([[choice_feature(t)] for t in texts], dtype=np.float32)])


def fit_demand(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    strata: np.ndarray,
    seed: int,
) -> tuple[Any, np.ndarray]:
    """Balanced logistic head on the labelled rows; out-of-fold probabilities for every row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    def model() -> Any:
        return LogisticRegression(C=DEMAND_C, max_iter=3000, class_weight="balanced")

    oof = np.zeros(len(y))
    for a, b in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, strata):
        fit = a[y[a] >= 0]
        oof[b] = model().fit(x[fit], y[fit], sample_weight=weight[fit]).predict_proba(x[b])[:, 1]
    rows = y >= 0
    return model().fit(x[rows], y[rows], sample_weight=weight[rows]), oof


def calibrate_floor(tier_oof: np.ndarray, demand_oof: np.ndarray, y_tier: np.ndarray) -> dict[str, Any]:
    """The lowest floor whose out-of-fold outcome accuracy is within MAX_DROP of no floor."""
    base_pred = tier_oof.argmax(1)
    base = float(np.mean(base_pred == y_tier))
    table = {}
    chosen = None
    for floor in FLOOR_GRID:
        pred = np.where((base_pred == 0) & (demand_oof >= floor), 1, base_pred)
        acc = float(np.mean(pred == y_tier))
        table[str(floor)] = round(acc, 4)
        if chosen is None and acc >= base - MAX_DROP:
            chosen = float(floor)
    return {"floor": chosen, "oof_accuracy_no_floor": round(base, 4), "oof_accuracy_by_floor": table}
