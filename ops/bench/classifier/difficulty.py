"""Does the embedding classifier's tier agree with people about difficulty? Held-out sets only.

    python -m ops.bench.classifier.difficulty [--weights NAME=PATH ...]

Every set here is outside the heads' training data and out of all tuning:
- FLASK (kaistAI/FLASK, no licence: evaluation only): Spearman of the complexity score with its five
  difficulty levels; its expert-level rows (plus ``flask_hard``) as expert prompts.
- WizardLM test set (CC BY-NC: evaluation only): Spearman with its 1-10 difficulty.
- ``tests/data/classifier_demand_heldout.json``: expert and chit-chat prompts written independently
  of the training prompts (``ops/scripts/classifier_demand.py``); a development set (earlier
  recipes were chosen looking at it).
- ``tests/data/classifier_demand_fresh.json``: 30 expert / 20 chit-chat prompts written before the
  demand floor was tuned, used by no choice (``fresh_*``).
- The routing-outcome held-out split of ``ops/scripts/build_classifier_data.py`` (the hash split,
  1,090 prompts with ``../shared``; the shipped 940 without the AlpacaEval rows otherwise): tier accuracy.
Embeddings are cached per text under ``$COMPASS_CACHE_DIR/classifier_build`` (the build's cache).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.common import print_table, write_json

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"
DEMAND = ROOT / "tests" / "data" / "classifier_demand_heldout.json"
FRESH = ROOT / "tests" / "data" / "classifier_demand_fresh.json"
FLASK_LEVELS = [
    "simple lifestyle knowledge",
    "advanced lifestyle knowledge",
    "formal education knowledge",
    "major level knowledge",
    "expert level knowledge",
]


def outcome_split(shared: Path) -> tuple[list[str], list[str], str]:
    from ops.scripts.build_classifier_data import TRAIN_ONLY, is_test, load_records

    if shared.is_dir():
        rows = [r for r in load_records(shared) if is_test(r["text"]) and r["source"] not in TRAIN_ONLY]
        where = "hash split of the build (../shared)"
    else:
        heldout = ROOT / "data" / "classifier" / "heldout.jsonl"
        rows = [json.loads(line) for line in heldout.open(encoding="utf-8")]
        where = "data/classifier/heldout.jsonl (no AlpacaEval rows)"
    return [r["text"] for r in rows], [r["tier"] for r in rows], where


def load_sets(shared: Path) -> dict[str, Any]:
    demand = json.loads(DEMAND.read_text(encoding="utf-8"))
    fresh = json.loads(FRESH.read_text(encoding="utf-8"))
    sets: dict[str, Any] = {"expert_heldout": demand["expert"], "chitchat_heldout": demand["chitchat"]}
    sets |= {"fresh_expert": fresh["expert"], "fresh_chitchat": fresh["chitchat"]}
    flask = shared / "flask"
    if flask.is_dir():
        rows = [json.loads(x) for x in gzip.open(flask / "flask_evaluation.jsonl.gz", "rt", encoding="utf-8")]
        rows = [r for r in rows if r["difficulty"] in FLASK_LEVELS]
        sets["flask"] = (
            [r["instruction"] for r in rows],
            [FLASK_LEVELS.index(r["difficulty"]) + 1 for r in rows],
        )
        hard = [json.loads(x)["instruction"] for x in (flask / "flask_hard_evaluation.jsonl").open()]
        sets["flask_expert"] = [t for t, lv in zip(*sets["flask"], strict=True) if lv == 5] + hard
    wizard = shared / "wizardlm-testset" / "WizardLM_testset.jsonl"
    if wizard.is_file():
        rows = [json.loads(x) for x in wizard.open(encoding="utf-8")]
        sets["wizardlm"] = ([r["Instruction"] for r in rows], [int(r["Difficulty"]) for r in rows])
    sets["outcome"] = outcome_split(shared)
    return sets


def evaluate(head: Any, embed: Any, sets: dict[str, Any], floor: Any = "default") -> dict[str, Any]:
    """The classifier's own rule (``EmbeddingHead.decide``); ``floor`` overrides the shipped one."""
    from scipy.stats import spearmanr

    from layers.types import TIERS

    floor = head.demand_floor if floor == "default" else floor

    def tiers_scores(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = embed(texts)
        probs, _ = head.predict(vectors, texts)
        return head.decide(probs, head.demand(vectors, texts), floor)

    out: dict[str, Any] = {}
    for name in ("expert_heldout", "fresh_expert", "flask_expert"):
        if name in sets:
            tier, _ = tiers_scores(sets[name])
            out[name] = {
                "n": len(tier),
                "share_simple": round(float(np.mean(tier == 0)), 3),
                "share_complex": round(float(np.mean(tier == 2)), 3),
            }
    for name in ("chitchat_heldout", "fresh_chitchat"):
        tier, score = tiers_scores(sets[name])
        out[name] = {
            "n": len(tier),
            "share_simple": round(float(np.mean(tier == 0)), 3),
            "max_score": round(float(score.max()), 3),
        }
    for name in ("flask", "wizardlm"):
        if name in sets:
            texts, levels = sets[name]
            _, score = tiers_scores(texts)
            rho = spearmanr(score, levels).statistic
            out[name] = {"n": len(texts), "spearman": round(float(rho), 3)}
    texts, labels, where = sets["outcome"]
    tier, _ = tiers_scores(texts)
    truth = np.array([TIERS.index(t) for t in labels])
    out["outcome_tier_accuracy"] = {
        "n": len(texts),
        "accuracy": round(float(np.mean(tier == truth)), 4),
        "set": where,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", nargs="*", default=[], help="NAME=PATH heads to compare (default: shipped)"
    )
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument(
        "--floors", type=float, nargs="*", default=[], help="also report the last head at these demand floors"
    )
    args = parser.parse_args()

    from layers.classifier.embedding import EmbeddingHead, default_weights_path
    from ops.scripts.build_classifier_data import embed_all

    heads = dict(w.split("=", 1) for w in args.weights) or {"shipped": str(default_weights_path())}
    sets = load_sets(args.shared)
    result = {name: evaluate(EmbeddingHead(path), embed_all, sets) for name, path in heads.items()}
    last_path = list(heads.values())[-1]
    last = EmbeddingHead(last_path)
    for floor in args.floors:
        heads[f"floor {floor}"] = last_path
        result[f"floor {floor}"] = evaluate(last, embed_all, sets, floor)
    rows = []
    for key, field in (
        ("expert_heldout", "share_simple"),
        ("expert_heldout", "share_complex"),
        ("fresh_expert", "share_simple"),
        ("fresh_expert", "share_complex"),
        ("flask_expert", "share_simple"),
        ("flask_expert", "share_complex"),
        ("chitchat_heldout", "share_simple"),
        ("fresh_chitchat", "share_simple"),
        ("flask", "spearman"),
        ("wizardlm", "spearman"),
        ("outcome_tier_accuracy", "accuracy"),
    ):
        first = result[next(iter(result))]
        if key in first:
            rows.append([f"{key} {field} (n={first[key]['n']})", *(result[h][key][field] for h in heads)])
    print_table("Layer 1 tiers against people's difficulty (held-out sets)", ["metric", *heads], rows)
    print(f"wrote {write_json('classifier_difficulty', {'heads': heads, 'results': result})}")


if __name__ == "__main__":
    main()
