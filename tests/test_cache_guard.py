"""The near-miss guard against reversed questions, through a real ``SemanticCache`` (MiniLM, FAISS, DuckDB).

The whole adversarial set (``tests/data/cache_adversarial.jsonl``, recipe in
``ops/bench/cache/adversarial_pairs.py``: role swaps, from/to, comparatives, antonyms, inverse
operations; tuned and held-out parts) is asked both ways under the default options: no hit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compass.storage.db import Database
from layers.cache.guard import near_miss
from layers.cache.keys import make_cache_key
from layers.cache.semantic import SemanticCache
from layers.embedding import Embedder
from layers.types import Prompt
from ops.bench.cache.adversarial_pairs import OUT, build, load

BODY = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
FUNCTION_WORDS = [
    ("How do I make pancakes?", "How should I make pancakes?"),
    ("How do I make a website?", "How can I make a website?"),
    ("What is a closure in JavaScript?", "What's a closure in JavaScript?"),
    ("What is the capital of France?", "What's the capital of France?"),
    ("What is the difference between TCP and UDP?", "What's the difference between TCP and UDP?"),
    ("How do I convert a list to a tuple in Python?", "How can I convert a list to a tuple in Python?"),
]


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    texts = [t for r in load() for t in (r["a"], r["b"])] + [t for p in FUNCTION_WORDS for t in p]
    unique = list(dict.fromkeys(texts))
    model = Embedder()
    model.load()
    return dict(zip(unique, model.encode(unique, batch_size=64), strict=True))


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[SemanticCache]:
    db = Database(tmp_path / "c.duckdb")
    db.open()
    cache = SemanticCache({}, db=db)  # the defaults: threshold 0.96, guard on, HNSW
    await cache.start()
    yield cache
    await cache.close()
    db.close()


async def hits(
    cache: SemanticCache, vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]]
) -> list[Any]:
    """For each pair and direction, store one side in a tenant of its own and ask the other."""
    out = []
    for i, (a, b) in enumerate(pairs):
        for d, (stored, asked) in enumerate(((a, b), (b, a))):
            tenant = f"p{i}-{d}"
            for text, act in ((stored, "store"), (asked, "ask")):
                key = make_cache_key(tenant, [{"role": "user", "content": text}], {"temperature": 0})
                prompt = Prompt(text, 5)
                prompt.set_embedding(vectors[text])
                if act == "store":
                    await cache.store(key, prompt, BODY, "m", 1.0, f"r{i}-{d}")
                else:
                    hit = await cache.lookup(key, prompt, min_capability=0.0)
                    if hit is not None:
                        out.append((stored, asked, hit.kind, round(hit.similarity, 3)))
    return out


def test_the_committed_set_is_the_recipe_output_and_large_enough() -> None:
    rows = load(OUT)
    assert [{k: r[k] for k in ("split", "category", "a", "b")} for r in rows] == [
        {k: r[k] for k in ("split", "category", "a", "b")} for r in build()
    ]
    assert len(rows) >= 300
    assert {r["category"] for r in rows} == {"role_swap", "direction", "comparative", "antonym", "inverse"}
    held = sum(r["split"] == "held_out" for r in rows)
    assert 0.25 <= held / len(rows) <= 0.45


async def test_no_adversarial_pair_is_served_the_other_answer(
    cache: SemanticCache, vectors: dict[str, np.ndarray]
) -> None:
    rows = load()
    pairs = [(r["a"], r["b"]) for r in rows]
    close = sum(float(vectors[a] @ vectors[b]) >= cache.threshold for a, b in pairs)
    assert close >= 200  # most pairs are within the threshold: cosine alone would serve them
    assert await hits(cache, vectors, pairs) == []
    refused = cache.stats()["refused"]
    assert refused["order"] > 0 and refused["antonym"] + refused["negation"] > 0


async def test_function_word_paraphrases_hit(cache: SemanticCache, vectors: dict[str, np.ndarray]) -> None:
    served = await hits(cache, vectors, FUNCTION_WORDS)
    assert len(served) == 2 * len(FUNCTION_WORDS)
    assert {kind for *_, kind, _ in served} == {"semantic"}


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ("Convert 100 Celsius to Fahrenheit.", "Convert 100 Fahrenheit to Celsius.", "order"),
        ("Is Tom taller than Anna?", "Is Anna taller than Tom?", "order"),
        ("Is 5 greater than 3?", "Is 3 greater than 5?", "order"),
        ("Convert a list to a tuple", "Convert a list -> tuple", None),
        ("Sort the rows in ascending order", "Sort the rows in descending order", "antonym"),
        ("Is Tom taller than Anna?", "Is Tom shorter than Anna?", "antonym"),
        ("How do I encrypt a file?", "How do I decrypt a file?", "antonym"),
        ("How do I import a CSV?", "How do I export a CSV?", "antonym"),
        ("How do I upload a file?", "How do I download a file?", "antonym"),
        ("In Python, how do I sort a list?", "How do I sort a list in Python?", None),
        ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?", None),
        ("What is the future of the Aam Aadmi Party?", "What is the Aam Aadmi Party's future?", None),
        ("How do I make pancakes?", "How should I make pancakes?", None),
    ],
)
def test_guard_reasons(a: str, b: str, reason: str | None) -> None:
    assert near_miss(a, b) == reason and near_miss(b, a) == reason
