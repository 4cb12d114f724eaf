"""Semantic-cache lookup latency, start-up time, memory and HNSW recall at 10k, 100k and 1M entries.

Vectors are real: MiniLM embeddings of QQP questions (``vectors.py``). The last ``--queries``
unique questions are held out as lookups; the index holds the first ``n`` of the others. QQP has
~137k unique questions, so sizes beyond that are *augmented*: each further vector is a real one
plus Gaussian noise, re-normalised to a cosine of about ``--augment-cos`` (0.8) with its source,
so the extra vectors stay on the manifold of real questions without duplicating them.

For each size and index kind (``flat``, ``hnsw``) the entries are bulk-inserted into a real
DuckDB ``cache_entries`` table, then a real ``SemanticCache`` starts on it:

* ``start (rebuild)``: no index file, the index is built from the stored vectors;
* ``start (file)``: a second start that loads the saved file (the normal restart);
* ``lookup excl. embedding``: ``SemanticCache.lookup`` with the request embedding already
  computed (exact tier, semantic search in one scope, guard, DuckDB read on a hit);
* ``lookup incl. embedding``: the same with the MiniLM embedding computed inside (single text);
* ``search``: the raw FAISS search alone; ``recall@1``: HNSW's best id equals the exact one;
* memory: the index's own estimate and the process RSS growth while starting.

Run: ``python -m ops.bench.cache.latency`` (defaults: sizes 10k 100k 1M; ~10-20 min on two
cores, most of it the 1M HNSW build). Writes ``ops/bench/results/cache_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from compass.storage.db import Database
from layers.cache.keys import make_cache_key
from layers.cache.semantic import SemanticCache
from layers.types import Prompt
from ops.bench.cache.vectors import DIM, qqp_vectors
from ops.bench.common import percentile, print_table, write_json

TENANT = "bench"
RESPONSE = '{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
RESPONSE += '"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}'


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def corpus(
    n: int, pool: np.ndarray, pool_texts: list[str], cos: float, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """``n`` vectors: the real pool first, then noisy copies of it (see the module docstring)."""
    if n <= len(pool):
        return pool[:n], pool_texts[:n]
    rng = np.random.default_rng(seed)
    parts, texts = [pool], list(pool_texts)
    sigma = np.sqrt(1 / cos**2 - 1) / np.sqrt(DIM)  # |noise| = tan(angle): cos(v, v + noise) ~= cos
    copy = 0
    while sum(len(p) for p in parts) < n:
        copy += 1
        take = min(len(pool), n - sum(len(p) for p in parts))
        noisy = pool[:take] + rng.standard_normal((take, DIM)).astype(np.float32) * sigma
        parts.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        texts += [f"{t} (variant {copy})" for t in pool_texts[:take]]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), texts


def bulk_insert(con: Any, vectors: np.ndarray, texts: list[str], scope: str) -> None:
    """Insert ``n`` entries through Arrow (one statement); every entry in one scope."""
    import pyarrow as pa

    n = len(vectors)
    now = time.time()
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    embedding = fixed.cast(pa.list_(pa.float32()))
    table = pa.table(
        {
            "id": [f"ce-{i}" for i in range(n)],
            "vector_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "tenant": pa.array([TENANT] * n),
            "scope": pa.array([scope] * n),
            "exact_hash": [f"exact-{i}" for i in range(n)],
            "query": pa.array(texts),
            "embedding": embedding,
            "response": pa.array([RESPONSE] * n),
            "model": pa.array(["medium"] * n),
            "capability": pa.array(np.ones(n)),
            "request_id": [f"req-{i}" for i in range(n)],
            "created_at": pa.array(np.full(n, now)),
            "last_hit_at": pa.array(now + np.arange(n) * 1e-6),
        }
    )
    con.register("bench_src", table)
    con.execute(
        "INSERT INTO cache_entries (id, vector_id, tenant, scope, exact_hash, query, embedding, response,"
        " model, capability, request_id, created_at, last_hit_at, hits, prompt_tokens, completion_tokens)"
        " SELECT id, vector_id, tenant, scope, exact_hash, query, embedding, response::JSON, model,"
        " capability, request_id, created_at, last_hit_at, 0, 10, 20 FROM bench_src"
    )
    con.unregister("bench_src")
    con.execute("CHECKPOINT")


def stats_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "n": len(values)}


async def run_config(
    n: int, kind: str, data: tuple[np.ndarray, list[str]], lookups: tuple[np.ndarray, list[str]], args: Any
) -> dict[str, Any]:
    (vectors, texts), (queries, qtexts) = data, lookups
    workdir = Path(tempfile.mkdtemp(prefix="compass-cache-bench-"))
    db = Database(workdir / "bench.duckdb")
    db.open()
    scope = make_cache_key(TENANT, [{"role": "user", "content": "x"}], {"temperature": 0}).scope
    t0 = time.perf_counter()
    await db.run(bulk_insert, vectors, texts, scope)
    insert_s = time.perf_counter() - t0
    options = {
        "index": kind,
        "index_path": str(workdir / "index.faiss"),
        "max_entries": n + 1000,
        "ttl_s": 0,
        "save_interval_s": 0,
        "threshold": args.threshold,
    }
    cache = SemanticCache({**options, "dim": DIM}, db=db)
    t0 = time.perf_counter()
    await cache.start()
    start_rebuild_s = time.perf_counter() - t0
    await cache.close()
    del cache
    gc.collect()
    rss1 = rss_bytes()
    cache = SemanticCache({**options, "dim": DIM}, db=db)
    t0 = time.perf_counter()
    await cache.start()
    start_file_s = time.perf_counter() - t0
    grown = rss_bytes() - rss1
    assert cache.stats()["index"]["loaded_from"] == "file" and len(cache.entries) == n

    excl: list[float] = []
    search: list[float] = []
    hits = 0
    k = max(cache.top_k, 2 * cache.top_k)  # what a lookup in the (single) scope asks the index for
    timed = args.slow_queries if kind == "flat" and n > 200_000 else len(queries)  # flat at 1M: ~0.1 s each
    for vector, text in zip(queries[:timed], qtexts[:timed], strict=True):
        key = make_cache_key(TENANT, [{"role": "user", "content": text}], {"temperature": 0})
        prompt = Prompt(text, 10)
        prompt.set_embedding(vector)
        t0 = time.perf_counter()
        hit = await cache.lookup(key, prompt, min_capability=0.0)
        excl.append((time.perf_counter() - t0) * 1000)
        hits += hit is not None
        t0 = time.perf_counter()
        cache.index.search(vector, k)
        search.append((time.perf_counter() - t0) * 1000)

    incl: list[float] = []
    if args.embed_queries:
        embedder = args.embedder
        for text in qtexts[: args.embed_queries]:
            key = make_cache_key(TENANT, [{"role": "user", "content": text}], {"temperature": 0})
            prompt = Prompt(text, 10, embed=embedder.embed)
            t0 = time.perf_counter()
            await cache.lookup(key, prompt, min_capability=0.0)
            incl.append((time.perf_counter() - t0) * 1000)
        await embedder.close()
    ids, _ = zip(*(cache.index.search(v, 8) for v in queries[: min(args.recall_queries, timed)]), strict=True)
    result = {
        "load_average_1m": os.getloadavg()[0],  # the machine is shared: context for the timings
        "entries": n,
        "index": kind,
        "insert_s": insert_s,
        "start_rebuild_s": start_rebuild_s,
        "start_file_s": start_file_s,
        "index_bytes_estimate": cache.index.memory_bytes(),
        "rss_growth_bytes_start": grown,
        "rss_total_bytes": rss_bytes(),
        "hits": hits,
        "lookup_excl_embedding": stats_ms(excl),
        "lookup_incl_embedding": stats_ms(incl),
        "search": stats_ms(search),
        "top8": [list(map(int, i)) for i in ids],
    }
    await cache.close()
    db.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def recall(exact: list[list[int]], approx: list[list[int]], near: np.ndarray) -> dict[str, float]:
    """recall@1 and @8 against the exact search; ``hit`` recall: @1 over queries whose exact
    best match is at or above the cache threshold (``near``), the ones that decide a hit."""
    pairs = list(zip(approx, exact, strict=True))
    at1 = np.array([a[0] == e[0] for a, e in pairs])
    at8 = np.mean([len(set(a) & set(e)) / len(e) for a, e in pairs])
    near = near[: len(pairs)]
    hit = float(at1[near].mean()) if near.any() else float("nan")
    return {
        "recall_at_1": float(at1.mean()),
        "recall_at_8": float(at8),
        "hit_recall": hit,
        "hit_queries": int(near.sum()),
    }


async def main_async(args: Any) -> None:
    import faiss

    texts, vectors = qqp_vectors(args.texts)
    queries, qtexts = vectors[-args.queries :], texts[-args.queries :]
    pool, pool_texts = vectors[: -args.queries], texts[: -args.queries]
    if args.embed_queries:
        from layers.embedding import Embedder

        args.embedder = Embedder()
        args.embedder.load()
    results = []
    for n in args.sizes:
        data, data_texts = corpus(n, pool, pool_texts, args.augment_cos)
        # the exact neighbours, once per size, for HNSW's recall
        flat = faiss.IndexFlatIP(DIM)
        flat.add(data)
        best, exact = flat.search(queries[: args.recall_queries], 8)
        del flat
        for kind in args.kinds:
            t0 = time.perf_counter()
            row = await run_config(n, kind, (data, data_texts), (queries, qtexts), args)
            approx = row.pop("top8")
            truth = [list(map(int, e + 1)) for e in exact[: len(approx)]]  # vector id = row + 1
            row.update(recall(truth, approx, best[:, 0] >= args.threshold))
            row["augmented"] = max(0, n - len(pool))
            row["wall_s"] = time.perf_counter() - t0
            results.append(row)
            p50, at1 = row["lookup_excl_embedding"]["p50_ms"], row["recall_at_1"]
            starts = f"{row['start_rebuild_s']:.1f}s/{row['start_file_s']:.1f}s"
            print(f"n={n} {kind}: lookup p50 {p50:.3f} ms, recall@1 {at1:.3f}, start {starts}", flush=True)
        del data, data_texts
        gc.collect()
    columns = [
        "entries",
        "index",
        "lookup p50 ms",
        "lookup p99 ms",
        "incl. embedding p50 ms",
        "incl. embedding p99 ms",
        "search p50 ms",
        "recall@1",
        "hit recall",
        "index MB",
        "start rebuild s",
        "start file s",
        "load avg",
    ]
    rows = [
        [
            r["entries"],
            r["index"],
            r["lookup_excl_embedding"]["p50_ms"],
            r["lookup_excl_embedding"]["p99_ms"],
            r["lookup_incl_embedding"]["p50_ms"],
            r["lookup_incl_embedding"]["p99_ms"],
            r["search"]["p50_ms"],
            r["recall_at_1"],
            r["hit_recall"],
            r["index_bytes_estimate"] / 2**20,
            r["start_rebuild_s"],
            r["start_file_s"],
            r["load_average_1m"],
        ]
        for r in results
    ]
    table = print_table("Semantic cache lookup (QQP MiniLM vectors, one scope)", columns, rows)
    write_json(
        "cache_latency",
        {
            "args": {k: v for k, v in vars(args).items() if k != "embedder"},
            "faiss": faiss.__version__,
            "results": results,
            "table": table,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw"])
    parser.add_argument("--queries", type=int, default=1000, help="held-out real questions used as lookups")
    parser.add_argument("--embed-queries", type=int, default=200, help="lookups timed with the embedding")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--slow-queries", type=int, default=100, help="timed lookups for flat above 200k")
    parser.add_argument("--texts", type=int, default=None, help="real questions to use (default all)")
    parser.add_argument("--augment-cos", type=float, default=0.8)
    parser.add_argument("--threshold", type=float, default=None, help="default: SemanticCache's")
    args = parser.parse_args()
    if args.threshold is None:
        from layers.cache.semantic import DEFAULT_THRESHOLD

        args.threshold = DEFAULT_THRESHOLD
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
