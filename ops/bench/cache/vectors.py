"""Real MiniLM vectors of the QQP questions, embedded once and cached under ``ops/bench/results``.

Embedding tens of thousands of questions on two shared CPU cores takes minutes, so the questions
are embedded in fixed chunks of the (stable, first-seen) list of unique texts and each chunk is
saved as a ``.npy`` file: a later run, or a run asking for more texts, only embeds what is missing.

The data is not shipped: it is read from ``$COMPASS_SHARED/data/gptcache-qqp`` (default
``/work/shared``); see that directory's README for its source and licence.

Run: ``python -m ops.bench.cache.vectors --limit 40000``
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("COMPASS_SHARED", "/work/shared"))
QQP_FULL = SHARED / "data" / "gptcache-qqp" / "similiar_qqp_full.jsonl.gz"
RESULTS = Path(__file__).resolve().parents[1] / "results"
CACHE_DIR = RESULTS / "qqp_minilm"
CHUNK = 4096
DIM = 384


@lru_cache(maxsize=1)
def load_pairs() -> list[dict]:
    """The 80,854 labelled QQP pairs (``text_a``, ``text_b``, ``label``) in file order."""
    if not QQP_FULL.exists():
        raise SystemExit(f"QQP data not found at {QQP_FULL}; set COMPASS_SHARED to the shared folder")
    with gzip.open(QQP_FULL, "rt") as fh:
        return [json.loads(line) for line in fh]


@lru_cache(maxsize=1)
def unique_texts() -> list[str]:
    """Every distinct question in first-seen order (pairs in file order): stable across runs."""
    seen: dict[str, None] = {}
    for row in load_pairs():
        seen.setdefault(row["text_a"], None)
        seen.setdefault(row["text_b"], None)
    return list(seen)


def texts_for_pairs(n_pairs: int) -> int:
    """How many leading unique texts cover the first ``n_pairs`` pairs (both sides)."""
    index = {text: i for i, text in enumerate(unique_texts())}
    last = 0
    for row in load_pairs()[:n_pairs]:
        last = max(last, index[row["text_a"]], index[row["text_b"]])
    return last + 1


def qqp_vectors(limit: int | None = None, verbose: bool = True) -> tuple[list[str], np.ndarray]:
    """``(texts, vectors)`` for the first ``limit`` unique questions, embedding what is not cached.

    Chunk ``k`` always holds texts ``[k*CHUNK, (k+1)*CHUNK)`` of the full list, so a cached
    chunk is valid for every ``limit``; a partial chunk (at the end) is re-embedded when more is
    asked for.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    every = unique_texts()
    texts = every if limit is None else every[:limit]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    embedder = None
    parts = []
    for start in range(0, len(texts), CHUNK):
        want = texts[start : start + CHUNK]
        path = CACHE_DIR / f"chunk_{start // CHUNK:04d}.npy"
        if path.exists():
            cached = np.load(path)
            if len(cached) >= len(want):
                parts.append(cached[: len(want)])
                continue
        if embedder is None:
            from layers.embedding import Embedder

            embedder = Embedder(threads=int(os.environ.get("COMPASS_EMBED_THREADS", "2")))
        t0 = time.perf_counter()
        full = every[start : start + CHUNK]  # embed the whole chunk: reusable by any later limit
        vectors = embedder.encode(full, batch_size=128)
        np.save(path, vectors)
        parts.append(vectors[: len(want)])
        if verbose:
            rate = len(full) / (time.perf_counter() - t0)
            print(f"embedded {start + len(full)}/{len(texts)} ({rate:.0f} texts/s)", flush=True)
    return texts, np.concatenate(parts) if parts else np.zeros((0, DIM), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N unique questions (default all)")
    args = parser.parse_args()
    names, vecs = qqp_vectors(args.limit)
    print(len(names), vecs.shape)


if __name__ == "__main__":
    main()
