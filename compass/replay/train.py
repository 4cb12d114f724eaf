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
