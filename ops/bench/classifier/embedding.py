"""Latency of the default MiniLM Layer 1 classifier, with and without the embedding, 1 and 16 callers.

    python -m ops.bench.classifier.embedding [--requests 200] [--concurrency 16] [--threads 1 2]
                                             [--runtimes torch onnx]

Prompts are the shipped held-out split (``data/classifier/heldout.jsonl``: chat instructions,
MMLU, GSM8K, MATH, Arena-Hard; cycled): all of it, then only the prompts under 200 characters.
"included" is what a request pays when Layer 1 asks for the embedding first (the semantic cache
then reuses the vector); "head only" is the classification once the embedding exists.
Concurrent callers share the embedder's micro-batches, as in the gateway. The paced run leaves
idle gaps between requests, as light traffic does: torch's worker threads then have to wake up.
Runtimes (the embedder's ``runtime`` option) run one after the other in the same process; the
largest difference between their vectors on the prompts is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from ops.bench.common import percentile, print_table, write_json

HELDOUT = Path(__file__).resolve().parents[3] / "data" / "classifier" / "heldout.jsonl"


def load_texts(limit: int) -> list[str]:
    rows = [json.loads(line)["text"] for line in HELDOUT.open(encoding="utf-8")]
    rows.sort(key=lambda t: hash(t) % 9973)  # a stable interleave of the sources
    return [rows[i % len(rows)] for i in range(limit)]


async def measure(
    classifier: Any, embedder: Any, texts: list[str], concurrency: int, embed: bool, pause_s: float = 0.0
) -> list[float]:
    """Per-classification wall times (ms) from ``concurrency`` callers working through ``texts``."""
    from layers.types import Prompt

    vectors = None if embed else embedder.encode(texts)
    queue = list(range(len(texts)))
    latencies: list[float] = []

    async def caller() -> None:
        while queue:
            i = queue.pop()
            prompt = Prompt(texts[i], approx_tokens=len(texts[i]) // 4, embed=embedder.embed)
            if vectors is not None:
                prompt.set_embedding(vectors[i])
            start = time.perf_counter()
            await classifier.classify(prompt)
            latencies.append((time.perf_counter() - start) * 1000)
            if pause_s:
                await asyncio.sleep(pause_s)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def row(
    runtime: str,
    prompts: str,
    threads: int | str,
    callers: str,
    embed: str,
    latencies: list[float],
    wall: float,
) -> dict:
    return {
        "runtime": runtime,
        "prompts": prompts,
        "threads": threads,
        "callers": callers,
        "embedding": embed,
        "n": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "throughput_per_s": len(latencies) / wall if wall else float("nan"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from layers.classifier.embedding import EmbeddingClassifier
    from layers.embedding import Embedder

    mixed = load_texts(args.requests)
    short = [t for t in load_texts(args.requests * 4) if len(t) < 200][: args.requests]
    rows: list[dict[str, Any]] = []
    vectors: dict[str, Any] = {}
    for runtime in args.runtimes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            embedder = Embedder(runtime=runtime, threads=threads)
            embedder.load()
            assert embedder.runtime == runtime, f"asked for {runtime}, got {embedder.runtime}"
            vectors.setdefault(runtime, embedder.encode(mixed, 8))
            classifier = EmbeddingClassifier({}, embedder=embedder)
            await classifier.start()
            if not rows:
                for prompts, texts in (("held-out mix", mixed), ("< 200 chars", short)):
                    latencies = await measure(classifier, embedder, texts, args.concurrency, embed=False)
                    rows.append(
                        row(
                            "-",
                            prompts,
                            "-",
                            f"1 and {args.concurrency}",
                            "excluded (head only)",
                            latencies,
                            0,
                        )
                    )
            await measure(classifier, embedder, mixed[:20], 1, embed=True)  # warm up
            for prompts, texts in (("held-out mix", mixed), ("< 200 chars", short)):
                for concurrency in (1, args.concurrency):
                    wall = time.perf_counter()
                    latencies = await measure(classifier, embedder, texts, concurrency, embed=True)
                    wall = time.perf_counter() - wall
                    rows.append(row(runtime, prompts, threads, str(concurrency), "included", latencies, wall))
            paced = short[: args.paced]
            latencies = await measure(
                classifier, embedder, paced, 1, embed=True, pause_s=args.pause_ms / 1000
            )
            label = f"1, {args.pause_ms:g} ms apart"
            rows.append(row(runtime, "< 200 chars", threads, label, "included", latencies, 0.0))
            await classifier.close()
            await embedder.close()
    diff = None
    if len(vectors) > 1:
        first, *others = vectors.values()
        diff = max(float(np.abs(first - other).max()) for other in others)
    return {"rows": rows, "requests": args.requests, "max_abs_diff_between_runtimes": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--paced", type=int, default=40, help="requests of the paced (idle gaps) run")
    parser.add_argument("--pause-ms", type=float, default=200.0, help="gap between paced requests")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    load_before = os.getloadavg()
    result = asyncio.run(run(args))
    result["load_average_1m"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    labels = {"p50_ms": "p50 ms", "p99_ms": "p99 ms", "throughput_per_s": "classifications/s"}
    keys = [
        "runtime",
        "prompts",
        "threads",
        "callers",
        "embedding",
        "n",
        "p50_ms",
        "p99_ms",
        "throughput_per_s",
    ]
    columns = [labels.get(k, k) for k in keys]
    table = [[r[k] for k in keys] for r in result["rows"]]
    print_table("Embedding classifier latency per classification (CPU)", columns, table)
    path = write_json("classifier_embedding", result)
    if result["max_abs_diff_between_runtimes"] is not None:
        print(
            "largest |difference| between the runtimes' vectors: "
            f"{result['max_abs_diff_between_runtimes']:.2e}"
        )
    print(f"1-minute load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
