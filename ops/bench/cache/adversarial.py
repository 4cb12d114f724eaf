"""False hits on the adversarial pair set through a real ``SemanticCache``, guard on and off.

Each pair of ``tests/data/cache_adversarial.jsonl`` (``adversarial_pairs.py``) is asked both ways:
``a`` is stored and ``b`` looked up, then ``b`` stored and ``a`` looked up, each in a tenant of
its own (so a lookup can only find its own pair's other question). Any hit is a false hit: the
cache would serve the answer to the reverse question. The same run does it twice, on a cache
with the default options and on one with ``guard: false``, so the difference is the guard's.
Also: the function-word paraphrases (``PARAPHRASES``), which should hit.

Everything is real: the bundled MiniLM, FAISS (the default HNSW index), DuckDB.

Run: ``python -m ops.bench.cache.adversarial`` (~1 min on two cores). Writes
``ops/bench/results/cache_adversarial.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.cache.adversarial_pairs import OUT, PARAPHRASES, load
from ops.bench.cache.vectors import RESULTS

BODY = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
}


async def run_pairs(
    pairs: list[tuple[str, str]], vectors: dict[str, np.ndarray], workdir: Path, **options: Any
) -> list[tuple[bool, bool]]:
    """For each pair: (hit when ``a`` is stored and ``b`` asked, hit the other way round)."""
    from compass.storage.db import Database
    from layers.cache.keys import make_cache_key
    from layers.cache.semantic import SemanticCache
    from layers.types import Prompt

    workdir.mkdir(parents=True, exist_ok=True)
    db = Database(workdir / "adv.duckdb")
    db.open()
    cache = SemanticCache(options, db=db)
    await cache.start()

    def request(text: str, tenant: str) -> tuple[Any, Prompt]:
        key = make_cache_key(tenant, [{"role": "user", "content": text}], {"temperature": 0})
        prompt = Prompt(text, 10)
        prompt.set_embedding(vectors[text])
        return key, prompt

    out: list[tuple[bool, bool]] = []
    try:
        for i, (a, b) in enumerate(pairs):
            hits = []
            for direction, (stored, asked) in enumerate(((a, b), (b, a))):
                tenant = f"pair{i}-{direction}"
                key, prompt = request(stored, tenant)
                await cache.store(key, prompt, BODY, "m", 1.0, f"req-{i}-{direction}")
                key, prompt = request(asked, tenant)
                hits.append(await cache.lookup(key, prompt, min_capability=0.0) is not None)
            out.append((hits[0], hits[1]))
    finally:
        await cache.close()
        db.close()
    return out


def embed_all(texts: list[str]) -> dict[str, np.ndarray]:
    from layers.embedding import Embedder

    embedder = Embedder()
    embedder.load()
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, embedder.encode(unique, batch_size=64), strict=True))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows = load(Path(args.pairs))
    pairs = [(r["a"], r["b"]) for r in rows]
    texts = [t for p in pairs for t in p] + [t for p in PARAPHRASES for t in p]
    vectors = embed_all(texts)
    cos = [float(vectors[a] @ vectors[b]) for a, b in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        on = await run_pairs(pairs, vectors, Path(tmp) / "on")
        off = await run_pairs(pairs, vectors, Path(tmp) / "off", guard=False)
        low = await run_pairs(pairs, vectors, Path(tmp) / "low", threshold=args.stress_threshold)
        para = await run_pairs(PARAPHRASES, vectors, Path(tmp) / "para")
    table: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for split in ("tuned", "held_out", "all"):
        cats = [*sorted({r["category"] for r in rows}), "all"]
        for cat in cats:
            idx = [
                i
                for i, r in enumerate(rows)
                if split in (r["split"], "all") and cat in (r["category"], "all")
            ]
            table[split][cat] = {
                "pairs": len(idx),
                "lookups": 2 * len(idx),
                "cos_ge_threshold": sum(cos[i] >= args.threshold for i in idx),
                "false_hits_guard_off": sum(sum(off[i]) for i in idx),
                "false_hits_guard_on": sum(sum(on[i]) for i in idx),
                "false_hits_guard_on_stress": sum(sum(low[i]) for i in idx),
            }
    leaks = [
        {"id": rows[i]["id"], "a": rows[i]["a"], "b": rows[i]["b"], "cos": round(cos[i], 4)}
        for i in range(len(rows))
        if any(on[i])
    ]
    para_hits = sum(sum(h) for h in para)
    para_cos = [float(vectors[a] @ vectors[b]) for a, b in PARAPHRASES]
    return {
        "data": str(Path(args.pairs).name),
        "threshold": args.threshold,
        "stress_threshold": args.stress_threshold,
        "table": table,
        "false_hits_with_guard": leaks,
        "paraphrases": {
            "pairs": len(PARAPHRASES),
            "lookups": 2 * len(PARAPHRASES),
            "hits": para_hits,
            "min_cos": round(min(para_cos), 4),
            "missed": [PARAPHRASES[i] for i, h in enumerate(para) if not all(h)],
        },
    }


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from layers.cache.semantic import DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=str(OUT))
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="for the cos column only")
    parser.add_argument(
        "--stress-threshold", type=float, default=0.85, help="a third run: guard on, this threshold"
    )
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_adversarial.json").write_text(json.dumps(result, indent=1))
    t, low = result["threshold"], result["stress_threshold"]
    print(f"| part | category | pairs | lookups | pairs cos >= {t} | false hits at {t}, guard off |", end="")
    print(f" false hits at {t}, guard on (default) | false hits at {low}, guard on |")
    print("|---|---|---|---|---|---|---|---|")
    for split, cats in result["table"].items():
        for cat, c in cats.items():
            print(
                f"| {split} | {cat} | {c['pairs']} | {c['lookups']} | {c['cos_ge_threshold']} |"
                f" {c['false_hits_guard_off']} | {c['false_hits_guard_on']} |"
                f" {c['false_hits_guard_on_stress']} |"
            )
    p = result["paraphrases"]
    print(f"function-word paraphrases: {p['hits']}/{p['lookups']} lookups hit (min cos {p['min_cos']})")
    for leak in result["false_hits_with_guard"]:
        print("FALSE HIT:", leak)
    for miss in p["missed"]:
        print("paraphrase missed:", miss)


if __name__ == "__main__":
    main()
