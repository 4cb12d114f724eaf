"""Conversation affinity on MT-Bench's second turns: what keeping turn 1's model costs or saves.

RouteLLM's MT-Bench data has GPT-4's judge score for each of two models (GPT-4-1106 and
Mixtral-8x7B) on both turns of 80 two-turn questions. Layer 1 (the shipped default classifier)
tiers each turn's prompt; as in the gateway's static rule, ``complex`` goes to GPT-4 and the
rest to Mixtral. Two policies for turn 2:

* ``independent``: turn 2 is routed on its own prompt;
* ``affinity``: turn 2 keeps turn 1's model unless Layer 1 puts it in a tier above that model's
  (the gateway's rule).

Reported: turn 2's mean judge score, its share sent to GPT-4, how many conversations switch model
mid-way, and turn 2's cost from the cost map's prices (GPT-4-1106, Mixtral on Together) with
token counts estimated from the answers' lengths, with and without a provider prompt cache
that bills the repeated prefix (turn 1 and its answer) at ``--cached-price`` of the input price.
That discount is an assumption (OpenAI's automatic prompt caching bills cached input at 50 %,
recent models at 10 %); a cache only helps when the model stays the same.

Caveat: a model's turn-2 score was judged after its own turn-1 answer, so a switched
conversation's turn 2 is scored as if the new model had answered turn 1 too.

    python -m ops.bench.affinity [--data-dir ../shared/data] [--cached-price 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path
from typing import Any

from compass.replay.data import data_dir

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
PRICES = {STRONG: ("gpt-4-1106-preview",), WEAK: ("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1",)}
TIER_OF_MODEL = {STRONG: 2, WEAK: 1}  # complex; simple and medium
TIER_INDEX = {"simple": 0, "medium": 1, "complex": 2}
ANSWER = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:|\n\n<\|The End of Assistant A)", re.S)
RESULTS = Path(__file__).resolve().parent / "results" / "affinity.json"


def load(root: Path) -> tuple[list[dict[str, Any]], dict[tuple[int, str, int], dict[str, Any]]]:
    folder = root / "routellm-evals" / "mt_bench"
    questions = [json.loads(line) for line in (folder / "question.jsonl").read_text().splitlines() if line]
    judged: dict[tuple[int, str, int], dict[str, Any]] = {}
    for line in (folder / "judgements.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers = ANSWER.findall(row["user_prompt"])
        judged[(row["question_id"], row["model"], row["turn"])] = {"score": row["score"], "answers": answers}
    return questions, judged


def price(model: str) -> tuple[float, float]:
    import litellm

    row = litellm.model_cost[PRICES[model][0]]
    return float(row["input_cost_per_token"]), float(row["output_cost_per_token"])


def tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the gateway's own estimate


async def tiers_of(texts: list[str]) -> list[str]:
    from layers.classifier.embedding import EmbeddingClassifier
    from layers.embedding import Embedder

    embedder = Embedder()
    embedder.load()
    classifier = EmbeddingClassifier({}, embedder=embedder)
    await classifier.start()
    try:
        return [c.tier for c in await classifier.classify_texts(texts)]
    finally:
        await classifier.close()
        await embedder.close()


def evaluate(questions: list[dict[str, Any]], judged: dict, tiers: list[str], cached_price: float) -> dict:
    prices = {m: price(m) for m in (STRONG, WEAK)}
    out: dict[str, dict[str, float]] = {}
    for policy in ("independent", "affinity"):
        score = strong = switches = cost_plain = cost_cached = 0.0
        for i, question in enumerate(questions):
            qid, (t1, t2) = question["question_id"], question["turns"]
            tier1, tier2 = TIER_INDEX[tiers[2 * i]], TIER_INDEX[tiers[2 * i + 1]]
            first = STRONG if tier1 == 2 else WEAK
            routed = STRONG if tier2 == 2 else WEAK
            second = routed if policy == "independent" or tier2 > TIER_OF_MODEL[first] else first
            score += judged[(qid, second, 2)]["score"]
            strong += second == STRONG
            switches += second != first
            answers = judged[(qid, first, 2)]["answers"] or [""]
            prefix = tokens(t1) + tokens(answers[0])
            new_input = tokens(t2)
            output = tokens((judged[(qid, second, 2)]["answers"] or ["", ""])[-1])
            p_in, p_out = prices[second]
            plain = (prefix + new_input) * p_in + output * p_out
            cached_prefix = prefix * p_in * (cached_price if second == first else 1.0)
            cost_plain += plain
            cost_cached += cached_prefix + new_input * p_in + output * p_out
        n = len(questions)
        out[policy] = {
            "turn2_mean_score": round(score / n, 3),
            "turn2_strong_share": round(strong / n, 3),
            "switches": int(switches),
            "turn2_usd_per_1k_conversations": round(cost_plain / n * 1000, 3),
            "turn2_usd_per_1k_with_prompt_cache": round(cost_cached / n * 1000, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cached-price", type=float, default=0.5, help="cached input, share of price")
    args = parser.parse_args()
    questions, judged = load(data_dir(args.data_dir))
    texts = [turn for q in questions for turn in q["turns"]]
    tiers = asyncio.run(tiers_of(texts))
    result = {
        "questions": len(questions),
        "cached_price": args.cached_price,
        "policies": evaluate(questions, judged, tiers, args.cached_price),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| policy | turn-2 score | turn-2 to GPT-4 | switches | USD / 1k turn 2s | with prompt cache |")
    print("|---|---|---|---|---|---|")
    for policy, row in result["policies"].items():
        print(
            f"| {policy} | {row['turn2_mean_score']} | {row['turn2_strong_share']:.0%} | {row['switches']} | "
            f"{row['turn2_usd_per_1k_conversations']} | {row['turn2_usd_per_1k_with_prompt_cache']} |"
        )


if __name__ == "__main__":
    main()
