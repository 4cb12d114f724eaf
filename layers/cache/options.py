"""The semantic cache's options and their defaults (``cache.options`` in the config)."""

from __future__ import annotations

from typing import Any

# Chosen on GPTCache's QQP pairs (ops/bench/cache/threshold.py, docs/cache/threshold.png): the
# lowest threshold (steps of 0.005) whose false-hit rate (share of non-duplicate pairs that would
# be served) stays <= 1 % with the guard on, on the first 20,000 pairs: 0.92 % of 12,533 hard
# negatives, keeping 16.9 % of the duplicates (the next 20,000, held out: 0.92 %, 16.5 %).
DEFAULT_THRESHOLD = 0.955

DEFAULTS: dict[str, Any] = {
    "threshold": DEFAULT_THRESHOLD,  # cosine similarity for a semantic hit
    "guard": True,  # refuse semantic hits that differ in numbers, negation or named entities
    "semantic": True,  # false: exact tier only
    "index": "hnsw",  # "hnsw" (approximate, ~0.3 ms at 100k) or "flat" (exact, ~14 ms at 100k)
    "index_options": {},  # e.g. {"hnsw_m": 32, "ef_search": 64}
    "index_path": None,  # the FAISS file; None keeps the index in memory (rebuilt at start)
    "ttl_s": 7 * 86400,  # entries older than this are never served (0: no expiry)
    "max_entries": 100_000,  # least recently used entries are evicted beyond this
    "top_k": 8,  # semantic candidates above the threshold checked per lookup
    "semantic_max_chars": 1000,  # longer turns: exact tier only (MiniLM reads ~256 word pieces)
    "subset_max": 2048,  # scopes up to this size are searched exactly among their own vectors
    "store_finish_reasons": ["stop", "tool_calls", "function_call"],
    "save_interval_s": 300,  # how often a changed index is written to index_path
    "sweep_interval_s": 60,  # how often a store also evicts expired entries
    "dim": None,  # embedding dimension; default: the embedder's
    "embed_wait_ms": 500,  # a lookup waits this long for the query embedding, then is a miss
    "single_threaded_search": True,  # no OpenMP fan-out for one query (see index.single_threaded_here)
    # The sampling policy, read by the gateway through ``layers.cache.keys.is_cacheable``.
    "max_temperature": 0.3,
    "cache_unset_temperature": True,  # no temperature in the request: cacheable
    "cache_all": False,
}
CAPABILITY_EPS = 1e-9
MAX_GLOBAL_K = 1024  # candidates fetched from the shared index for one scope among many
# How long a repeat waits for the same question's answer that is being stored: less than an
# upstream call takes, more than a store takes unless the embedder is backed up.
STORE_WAIT_S = 2.0
