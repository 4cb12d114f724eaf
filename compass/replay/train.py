"""``compass train``: Beta priors per (context, model) fitted on a data set's TRAIN split.

The contexts are the ones the live selector files rewards under: the Layer 1 tier (``context:
tier``) or ``tier:task_type`` (``context: tier_task``), from the same classifier the gateway
runs. The output is the JSON ``ThompsonSelector`` loads from its ``priors_path`` option::

    {"contexts": {"<context>": {"<model>": {"alpha": a, "beta": b, ...}}}, ...}

Model names in the data set rarely match a pool's names: ``rename`` maps them (models not in the
pool are simply never looked up). In ``tier_task`` mode plain-tier entries are written too, as
the selector's fallback for task types the train split never produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compass.replay.data import ReplayData, load_dataset
from compass.replay.features import DIM, classify, embeddings
from compass.replay.fit import context_key, fit_context_priors


def train_priors(
    dataset: str,
    data_dir: str | None = None,
    classifier: str = "embedding",
    context: str = "tier",
    cap: float | None = None,
    rename: dict[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Fit the priors; returns the JSON-able document (``contexts`` plus provenance)."""
    if context not in ("tier", "tier_task"):
        raise ValueError("context must be 'tier' or 'tier_task'")
    data: ReplayData = load_dataset(dataset, data_dir)
    train = data.train
    if classifier == "length":
        vectors = np.zeros((len(train), DIM), dtype=np.float32)  # the length rule never reads them
        source = "none (length classifier)"
    else:
        vectors, _, source = embeddings(
            ReplayData(data.name, data.models, train, train.subset(np.arange(0))),
            data.name,
            (lambda done, total: progress("embed", done, total)) if progress else None,
        )
    cls, used = classify(train.prompts, vectors, classifier, {})
    models = [(rename or {}).get(m, m) for m in data.models]
    doc = fit_context_priors(cls, train.rewards, models, context, cap)
    contexts = [context_key(c, context) for c in cls]
    counts = {k: contexts.count(k) for k in sorted(set(contexts))}
    return {
        **doc,
        "source": {
            "dataset": data.name,
            "split": "train",
            "prompts": len(train),
            "classifier": used,
            "embeddings": source,
            "context_mode": context,
            "rows_per_context": counts,
            "renamed": rename or {},
            "notes": [*data.notes, "fitted on the TRAIN split only"],
        },
    }


def fleet_reward_events(url: str) -> tuple[list[Any], str]:
    """The fold's reward events on the fleet store, in the live fold's order, with their vectors."""
    from compass.storage.pg_rows import load_reward_events_pg
    from compass.storage.postgres import connect, redact

    con = connect(url)
    try:
        events, _ = load_reward_events_pg(con)
    finally:
        con.close()
    return events, f"read the fleet store {redact(url)}"


def train_history(path: str, cap: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Memory rows and priors from the gateway's own rewarded requests (``compass train --history``).

    ``path`` is a ``.duckdb`` file, a COMPASS_HOME, or the fleet store's ``postgresql://`` URL (its
    reward rows are read directly, vectors included). Every non-superseded reward row is used once,
    a request's feedback winning over a failure of the same model (as the live fold files them):

    - memory: one row per rewarded request that stored its vector, the rewards of the models it
      observed (``mask`` marks them), weight 1 (each is one real observation, unlike a benchmark's
      train rows where every model was graded);
    - priors: per selector context and model, the Beta(1, 1) posterior of its observed rewards,
      counted as at most ``cap`` observations.

    Returns ``(memory arrays for np.savez, priors document)``.
    """
    from compass.replay.history import chosen_rewards, read_history, resolve_db

    if str(path).startswith(("postgresql://", "postgres://")):
        from compass.storage.postgres import redact

        events, how = fleet_reward_events(str(path))
        db: Any = redact(str(path))
    else:
        db = resolve_db(path)
        _, events, how = read_history(db)
    if not events:
        raise ValueError(f"{db} has no rewarded requests (POST /feedback or upstream failures)")
    rewards = chosen_rewards(events)
    models = sorted({model for _, model in rewards})
    slot = {m: j for j, m in enumerate(models)}
    vector_of: dict[str, np.ndarray] = {}
    context_of: dict[str, str] = {}
    for e in events:
        context_of.setdefault(e.request_id, e.context)
        if e.embedding is not None and e.request_id not in vector_of:
            vector_of[e.request_id] = np.frombuffer(e.embedding, dtype=np.float32)
    requests = list(dict.fromkeys(rid for rid, _ in rewards))
    row_of = {rid: i for i, rid in enumerate(r for r in requests if r in vector_of)}
    matrix = np.zeros((len(row_of), len(models)), dtype=np.float32)
    mask = np.zeros_like(matrix, dtype=bool)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for (rid, model), reward in rewards.items():
        context = context_of[rid]
        sums.setdefault(context, np.zeros(len(models)))[slot[model]] += reward
        counts.setdefault(context, np.zeros(len(models)))[slot[model]] += 1
        if rid in row_of:
            matrix[row_of[rid], slot[model]] = reward
            mask[row_of[rid], slot[model]] = True
    contexts: dict[str, dict[str, dict[str, float]]] = {}
    for context, n in sums.items():
        seen = counts[context]
        contexts[context] = {}
        for m, j in slot.items():
            if seen[j] == 0:
                continue
            mean = float(n[j] / seen[j])
            weight = float(seen[j]) if cap is None else min(cap, float(seen[j]))
            contexts[context][m] = {
                "alpha": 1.0 + weight * mean,
                "beta": 1.0 + weight * (1.0 - mean),
                "mean": mean,
                "n": float(seen[j]),
            }
    vectors = np.stack([vector_of[r] for r in row_of]) if row_of else np.zeros((0, DIM), np.float32)
    memory = {
        "vectors": vectors.astype(np.float32),
        "models": np.array(models),
        "rewards": matrix,
        "mask": mask,
        "weight": np.float32(1.0),
    }
    priors = {
        "format": "compass-priors/1",
        "cap": cap,
        "contexts": contexts,
        "source": {
            "history": str(db),
            "read": how,
            "reward_rows": len(events),
            "requests": len(requests),
            "memory_rows": len(row_of),
            "models": models,
            "notes": ["fitted on the gateway's own rewarded requests"],
        },
    }
    return memory, priors


def train_memory(
    dataset: str,
    data_dir: str | None = None,
    rename: dict[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """The neighbourhood selector's memory from a TRAIN split: every prompt's vector and all its
    models' rewards, plus ``k`` chosen by held-out error (``compass.replay.fit.choose_knn_k``)."""
    from compass.replay.fit import choose_knn_k

    data: ReplayData = load_dataset(dataset, data_dir)
    train = data.train
    vectors, _, _ = embeddings(
        ReplayData(data.name, data.models, train, train.subset(np.arange(0))),
        data.name,
        (lambda done, total: progress("embed", done, total)) if progress else None,
    )
    return {
        "vectors": vectors.astype(np.float32),
        "models": np.array([(rename or {}).get(m, m) for m in data.models]),
        "rewards": np.asarray(train.rewards, dtype=np.float32),
        "k": np.int64(choose_knn_k(vectors, train.rewards)),
    }
