"""Build ``data/classifier/``: the embedding classifier's fitted heads and its held-out split.

Reproducible from ``../shared/data`` (override with ``COMPASS_SHARED``)::

    python -m ops.scripts.build_classifier_data

Only Apache-2.0 / MIT sources and the prompts written for this repository
(``ops/scripts/classifier_demand.py``: chit-chat → simple, expert → complex, training only) are
read (see ``data/classifier/README.md`` for the labelling rules). Embeddings are cached per text
under ``~/.cache/compass/classifier_build`` (``$COMPASS_CACHE_DIR``) so a rerun only refits.
scikit-learn is used here (it comes with sentence-transformers); serving needs numpy only.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("COMPASS_SHARED", ROOT.parent / "shared")) / "data"
OUT = ROOT / "data" / "classifier"
CACHE = Path(os.environ.get("COMPASS_CACHE_DIR", "~/.cache/compass")).expanduser() / "classifier_build"

TIERS = ("simple", "medium", "complex")
TASKS = ("code", "math", "creative_writing", "qa", "general")
SEED = 20240917
TEST_FRACTION = 0.2
MMLU_SAMPLE = 1500
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GPT4 = "gpt-4-1106-preview"
MMLU_MATH = {
    "abstract_algebra",
    "college_mathematics",
    "elementary_mathematics",
    "high_school_mathematics",
    "high_school_statistics",
}
MT_BENCH_TASK = {
    "writing": "creative_writing",
    "roleplay": "creative_writing",
    "coding": "code",
    "math": "math",
    "stem": "qa",
    "humanities": "qa",
    "extraction": "general",
    "reasoning": "general",
}
# AlpacaEval's instruction set is CC BY-NC 4.0 on the Hugging Face Hub although the GitHub repo it
# was copied from is Apache-2.0: its texts are kept out of the shipped held-out file.
NO_TEXT_SHIPPED = {"alpaca-eval"}
# Demand labels: what a prompt asks for, not which model answered. They go to the training split
# only (their evaluation is a separate, independently written set) and count DEMAND_WEIGHT times.
TRAIN_ONLY = {"demand-chitchat", "demand-expert"}
DEMAND_WEIGHT = 8.0
# The C that 5-fold CV picks on the outcome rows alone; with the demand rows CV prefers 3, which
# costs 0.01 of held-out outcome accuracy. ``--tier-c 0`` restores the CV search.
TIER_C = 1.0
ARENA_TASK = {"coding": "code", "math": "math", "creative_writing": "creative_writing"}
# AlpacaEval instructions are "general" unless one of these cues says otherwise; then the task is
# left unknown (masked) rather than guessed, so no heuristic ever writes a positive task label.
NOT_GENERAL = re.compile(
    r"```|\bcode\b|python|javascript|java\b|c\+\+|\bsql\b|\bfunction\b|program|regex|html|\bcss\b|"
    r"\d\s*[-+*/^=]\s*\d|equation|integral|derivative|calculate|\bsolve\b|"
    r"\bpoem|\bstory|\bsong\b|lyrics|haiku|limerick|\bessay|\bscript\b|fiction|\brap\b",
    re.IGNORECASE,
)


def mixtral_suffices_tier(mixtral_ok: bool, gpt4_ok: bool) -> str | None:
    """The weakest model class that got it right: Mixtral → simple, only GPT-4 → medium."""
    if mixtral_ok:
        return "simple"
    if gpt4_ok:
        return "medium"
    return None  # both wrong: very hard, mislabelled or an extraction failure; not used


def truthy(value: str) -> bool:
    return value.strip().lower() == "true"


def load_records(shared: Path) -> list[dict[str, Any]]:
    """Every labelled prompt: ``text, tier, task (or None), source``."""
    rng = random.Random(SEED)
    records: list[dict[str, Any]] = []

    for row in map(json.loads, (shared / "math500" / "test.jsonl").open()):
        tier = "medium" if int(row["level"]) <= 2 else "complex"
        records.append({"text": row["problem"], "tier": tier, "task": "math", "source": "math500"})

    arena = shared / "arena-hard-questions"
    for row in map(json.loads, (arena / "arena-hard-v2.0_question.jsonl").open()):
        task = ARENA_TASK.get(row["subcategory"])
        records.append({"text": row["prompt"], "tier": "complex", "task": task, "source": "arena-hard-v2"})
    for row in map(json.loads, (arena / "arena-hard-v0.1_question.jsonl").open()):
        records.append({"text": row["prompt"], "tier": "complex", "task": None, "source": "arena-hard-v0.1"})

    evals = shared / "routellm-evals"
    with (evals / "gsm8k" / "gsm8k_responses.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            tier = mixtral_suffices_tier(truthy(row[MIXTRAL]), truthy(row[GPT4]))
            if tier:
                records.append({"text": row["prompt"], "tier": tier, "task": "math", "source": "gsm8k"})

    mmlu: list[dict[str, Any]] = []
    for path in sorted(glob.glob(str(evals / "mmlu" / "mmlu_*.csv"))):
        subject = Path(path).stem.removeprefix("mmlu_")
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                tier = mixtral_suffices_tier(truthy(row[MIXTRAL]), truthy(row[GPT4]))
                if tier:
                    task = "math" if subject in MMLU_MATH else "qa"
                    mmlu.append({"text": row["prompt"], "tier": tier, "task": task, "source": "mmlu"})
    records += rng.sample(mmlu, min(MMLU_SAMPLE, len(mmlu)))

    turn1: dict[tuple[int, str], float] = {}
    for row in map(json.loads, (evals / "mt_bench" / "judgements.jsonl").open()):
        if row["turn"] == 1:
            turn1[(row["question_id"], row["model"])] = float(row["score"])
    for row in map(json.loads, (evals / "mt_bench" / "question.jsonl").open()):
        qid = row["question_id"]
        mixtral_ok = turn1.get((qid, MIXTRAL), 0.0) >= 8
        gpt4_ok = turn1.get((qid, GPT4), 0.0) >= 8
        tier = mixtral_suffices_tier(mixtral_ok, gpt4_ok) or "complex"  # judged, not keyed: keep
        task = MT_BENCH_TASK[row["category"]]
        records.append({"text": row["turns"][0], "tier": tier, "task": task, "source": "mt-bench"})

    import duckdb

    parquet = shared / "alpaca-eval-annotations" / "annotations.parquet"
    instructions = duckdb.sql(f"SELECT DISTINCT instruction FROM '{parquet}' ORDER BY instruction").fetchall()
    for (text,) in instructions:
        task = None if NOT_GENERAL.search(text) else "general"
        records.append({"text": text, "tier": "simple", "task": task, "source": "alpaca-eval"})

    from ops.scripts.classifier_demand import CHITCHAT, EXPERT

    records += [{"text": t, "tier": "simple", "task": None, "source": "demand-chitchat"} for t in CHITCHAT]
    records += [{"text": t, "tier": "complex", "task": None, "source": "demand-expert"} for t in EXPERT]

    seen: set[str] = set()
    unique = []
    for record in records:
        key = record["text"].strip()
        if key and key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def is_test(text: str) -> bool:
    """A stable split: the text's hash decides, so adding a source never reshuffles the others."""
    digest = hashlib.sha256(f"{SEED}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def embed_all(texts: list[str]) -> np.ndarray:
    """MiniLM vectors of ``texts``, cached per text: adding a source embeds only its own prompts."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "minilm_vectors.npz"
    keys = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            cached = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in cached}.items())
    if missing:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from layers.embedding import Embedder

        start = time.perf_counter()
        vectors = Embedder().encode([t for _, t in missing], batch_size=32)
        print(f"embedded {len(missing)} texts in {time.perf_counter() - start:.0f}s")
        cached.update(zip([k for k, _ in missing], vectors, strict=True))
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(cached)), vectors=np.stack(list(cached.values())))
        tmp.replace(path)
    return np.stack([cached[k] for k in keys]).astype(np.float32)


def features(vectors: np.ndarray, texts: list[str], mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Embedding plus standardised length cues, exactly as ``EmbeddingClassifier`` builds them."""
    from layers.classifier.embedding import length_features

    extra = (np.stack([length_features(t) for t in texts]) - mean) / scale
    return np.hstack([vectors, extra]).astype(np.float32)


def objective(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Macro F1: the rare medium tier counts as much as the common simple one, without flooding it."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0))


def best_thresholds(probs: np.ndarray, y: np.ndarray, score: np.ndarray | None = None) -> tuple[float, float]:
    """Cut points on the score (default: expected complexity) that maximise ``objective`` (out-of-fold)."""
    score = probs[:, 1] * 0.5 + probs[:, 2] if score is None else score
    best = (-1.0, 1 / 3, 2 / 3)
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    for lo in grid:
        for hi in grid[grid > lo]:
            value = objective(np.where(score < lo, 0, np.where(score < hi, 1, 2)), y, 3)
            if value > best[0]:
                best = (value, float(lo), float(hi))
    return best[1], best[2]


def class_weights(y: np.ndarray, power: float) -> dict[int, float]:
    """``(n / n_k) ** power``: 0 is unweighted, 1 is sklearn's "balanced"; 0.5 sits between."""
    counts = np.bincount(y)
    weights = (counts.sum() / counts) ** power
    weights /= weights.mean()
    return {k: float(w) for k, w in enumerate(weights)}


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    power: float,
    sample_weight: np.ndarray | None = None,
    scored: np.ndarray | None = None,
    cs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0),
) -> tuple[Any, float, np.ndarray]:
    """Multinomial logistic regression, C by 5-fold CV; returns (model, C, out-of-fold probs).

    ``sample_weight`` multiplies rows in the fit; C is chosen on the ``scored`` rows (the outcome labels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    weights = class_weights(y, power)
    fit_params = {} if sample_weight is None else {"sample_weight": sample_weight}
    scored = np.ones(len(y), bool) if scored is None else scored
    best: tuple[float, float, np.ndarray] | None = None
    for c in cs:
        model = LogisticRegression(C=c, class_weight=weights, max_iter=3000)
        oof = cross_val_predict(model, x, y, cv=folds, method="predict_proba", params=fit_params)
        value = objective(oof[scored].argmax(1), y[scored], n_classes)
        print(f"  C={c:<5} out-of-fold macro F1 {value:.3f}")
        if best is None or value > best[0]:
            best = (value, c, oof)
    assert best is not None
    model = LogisticRegression(C=best[1], class_weight=weights, max_iter=3000).fit(x, y, **fit_params)
    return model, best[1], best[2]


def tier_metrics(pred: np.ndarray, y: np.ndarray, sources: list[str]) -> dict[str, Any]:
    per_source = {}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources])
        per_source[source] = {
            "n": int(mask.sum()),
            "accuracy": round(float(np.mean(pred[mask] == y[mask])), 3),
        }
    confusion = [[int(np.sum((y == i) & (pred == j))) for j in range(3)] for i in range(3)]
    return {
        "accuracy": round(float(np.mean(pred == y)), 3),
        "balanced_accuracy": round(float(np.mean([np.mean(pred[y == k] == k) for k in range(3)])), 3),
        "macro_f1": round(objective(pred, y, 3), 3),
        "confusion_rows_true_cols_pred": confusion,
        "per_source": per_source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--exclude", nargs="*", default=[], help="sources to leave out of training and test")
    parser.add_argument(
        "--demand-weight", type=float, default=DEMAND_WEIGHT, help="weight of each hand-written demand prompt"
    )
    parser.add_argument("--tier-c", type=float, default=TIER_C, help="tier head's C (0: pick by 5-fold CV)")
    args = parser.parse_args()

    records = [r for r in load_records(args.shared) if r["source"] not in set(args.exclude)]
    texts = [r["text"] for r in records]
    print(f"{len(records)} prompts; tiers {Counter(r['tier'] for r in records)}")
    print(f"sources {Counter(r['source'] for r in records)}")
    vectors = embed_all(texts)
    test = np.array([is_test(r["text"]) and r["source"] not in TRAIN_ONLY for r in records])
    train = ~test
    demand = np.array([r["source"] in TRAIN_ONLY for r in records])
    weight = np.where(demand, args.demand_weight, 1.0)

    from layers.classifier.embedding import length_features

    raw_extra = np.stack([length_features(t) for t, keep in zip(texts, train, strict=True) if keep])
    mean, scale = raw_extra.mean(0), raw_extra.std(0) + 1e-6
    x = features(vectors, texts, mean, scale)
    y_tier = np.array([TIERS.index(r["tier"]) for r in records])
    y_task = np.array([TASKS.index(r["task"]) if r["task"] else -1 for r in records])

    print("tier head:")
    outcome = ~demand[train]
    tier_model, tier_c, oof = fit_head(
        x[train],
        y_tier[train],
        3,
        power=0.5,
        sample_weight=weight[train],
        scored=outcome,
        cs=(args.tier_c,) if args.tier_c > 0 else (0.3, 1.0, 3.0, 10.0),
    )
    from ops.scripts.classifier_demand_head import (
        DEMAND_C,
        calibrate_floor,
        demand_features,
        demand_labels,
        fit_demand,
    )

    print("demand head:")
    y_demand = demand_labels(records, args.shared)
    train_texts = [t for t, keep in zip(texts, train, strict=True) if keep]
    demand_model, demand_oof = fit_demand(
        demand_features(x[train], train_texts),
        y_demand[train],
        weight[train],
        (y_demand[train] + 1) * 3 + y_tier[train],
        SEED,
    )
    calibration = calibrate_floor(oof[outcome], demand_oof[outcome], y_tier[train][outcome])
    floor = calibration["floor"]
    print(f"  demand floor {floor} ({calibration})")
    combined = 0.5 * (oof[:, 1] * 0.5 + oof[:, 2]) + 0.5 * demand_oof
    lo, hi = best_thresholds(oof[outcome], y_tier[train][outcome], combined[outcome])
    task_rows = train & (y_task >= 0)
    print("task head:")
    task_model, task_c, _ = fit_head(x[task_rows], y_task[task_rows], len(TASKS), power=1.0)

    probs = tier_model.predict_proba(x[test])
    test_texts = [t for t, keep in zip(texts, test, strict=True) if keep]
    demand_test = demand_model.predict_proba(demand_features(x[test], test_texts))[:, 1]
    score = 0.5 * (probs[:, 1] * 0.5 + probs[:, 2]) + 0.5 * demand_test
    floored = probs.argmax(1)
    if floor is not None:
        floored = np.where((floored == 0) & (demand_test >= floor), 1, floored)
    cut = np.where(score < lo, 0, np.where(score < hi, 1, 2))
    y_test = y_tier[test]
    test_sources = [r["source"] for r, t in zip(records, test, strict=True) if t]
    majority = Counter(y_tier[train].tolist()).most_common(1)[0][0]
    task_test = test & (y_task >= 0)
    task_pred = task_model.predict_proba(x[task_test]).argmax(1)
    metrics = {
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "excluded_sources": sorted(args.exclude),
        "train_only_sources": sorted(TRAIN_ONLY),
        "demand_weight": args.demand_weight,
        "heldout_file_omits": sorted(NO_TEXT_SHIPPED),
        "tier_counts": dict(Counter(r["tier"] for r in records)),
        "source_counts": dict(Counter(r["source"] for r in records)),
        "C": {"tier": tier_c, "task": task_c},
        "tier_test_argmax": tier_metrics(floored, y_test, test_sources),
        "tier_test_argmax_no_floor": tier_metrics(probs.argmax(1), y_test, test_sources),
        "demand": {"C": DEMAND_C, "labelled_train_rows": int((y_demand[train] >= 0).sum()), **calibration},
        "thresholds": [lo, hi],
        "tier_test_thresholds": tier_metrics(cut, y_test, test_sources),
        "majority_baseline": {
            "tier": TIERS[majority],
            "accuracy": round(float(np.mean(y_test == majority)), 3),
        },
        "task_test": {
            "n": int(task_test.sum()),
            "accuracy": round(float(np.mean(task_pred == y_task[task_test])), 3),
            "majority_accuracy": round(float(np.max(np.bincount(y_task[task_test])) / task_test.sum()), 3),
        },
    }
    print(json.dumps(metrics, indent=2))

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "embedding_head.npz",
        tier_W=tier_model.coef_.astype(np.float32),
        tier_b=tier_model.intercept_.astype(np.float32),
        task_W=task_model.coef_.astype(np.float32),
        task_b=task_model.intercept_.astype(np.float32),
        tiers=np.array(TIERS),
        tasks=np.array(TASKS),
        feat_mean=mean.astype(np.float32),
        feat_scale=scale.astype(np.float32),
        thresholds=np.array([lo, hi], dtype=np.float32),
        demand_W=demand_model.coef_.reshape(-1).astype(np.float32),
        demand_b=np.float32(demand_model.intercept_[0]),
        **({} if floor is None else {"demand_floor": np.float32(floor)}),
        embed_dim=np.array(vectors.shape[1]),
        embedder=np.array("sentence-transformers/all-MiniLM-L6-v2"),
    )
    with (args.out / "heldout.jsonl").open("w", encoding="utf-8") as fh:
        for record, keep in zip(records, test, strict=True):
            if keep and record["source"] not in NO_TEXT_SHIPPED:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
