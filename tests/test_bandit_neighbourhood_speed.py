"""The per-prompt selector's faster decision path decides bit for bit as the path before it.

``ops/bench/bandit_neighbourhood_ref.py`` keeps the decision path of commit b41709d (separate
``sa``/``sb`` arrays, FAISS's Python wrapper, one numpy call per array). Both selectors fold the
same reward events and draw from the same seed; every field of every ``Selection`` (model,
ranking, utilities, sampled draws, propensity) and every posterior must be equal, not close,
over the code paths that matter: an IVF index plus an exact tail, the tail alone with fewer rows
than ``k``, train rows, a half-life, a model added after the rows, a reordered candidate subset,
the option variants (lam, ctx_weight, absolute kernel, conflict_z) and compaction past ``max_rows``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.memory import FIRST_TRAIN
from layers.bandit.neighbourhood import NeighbourhoodSelector
from layers.classifier.base import Classification
from layers.types import TIERS, ModelSpec
from ops.bench.bandit_neighbourhood_ref import ReferenceNeighbourhood

DIM = 384


def pool(n: int) -> list[ModelSpec]:
    return [
        ModelSpec(
            name=f"m{i}",
            litellm_model=f"openai/m{i}",
            tier=TIERS[i % 3],
            input_price_per_mtok=0.1 + i,
            output_price_per_mtok=0.5 + 2 * i,
        )
        for i in range(n)
    ]


def unit(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def events(models: list[ModelSpec], n: int, seed: int = 0) -> list[RewardEvent]:
    """``n`` requests; some rate two models (one row, two slots), some repeat a vector (ties)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((40, DIM)).astype(np.float32)
    vecs = unit(rng, centres, n)
    vecs[1::50] = vecs[0::50][: len(vecs[1::50])]  # exact duplicates: equal similarities
    out = []
    for i, vec in enumerate(vecs):
        picks = rng.choice(len(models), size=1 + int(i % 7 == 0), replace=False)
        for j in picks:
            out.append(
                RewardEvent(
                    request_id=f"r{i}",
                    context=TIERS[i % 3],
                    model=models[j].name,
                    reward=float(rng.random()),
                    ts=1.7e9 + i,
                    embedding=vec.tobytes(),
                    source="failure" if i % 11 == 0 else "judge",
                )
            )
    return out


def queries(models: list[ModelSpec], n: int, seed: int = 5) -> list[SelectionContext]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((40, DIM)).astype(np.float32)
    vecs = unit(rng, centres, n)
    return [
        SelectionContext(
            classification=Classification(tier=TIERS[k % 3], score=0.5, backend="test"),
            candidates=models,
            prompt_tokens=(30, 400, 3000)[k % 3],
            expected_completion_tokens=200,
            cost_weight=(0.3, None, 0.0)[k % 3],
            embedding=None if k % 17 == 5 else vecs[k],
        )
        for k in range(n)
    ]


def pair(options: dict[str, Any], models: list[ModelSpec], clock: Any = None) -> list[Any]:
    opts = {"seed": 3, **options}
    return [
        NeighbourhoodSelector(opts, models, clock=clock),
        ReferenceNeighbourhood(opts, models, clock=clock),
    ]


def assert_same(selectors: list[Any], ctxs: list[SelectionContext]) -> None:
    new, old = selectors
    for ctx in ctxs:
        context = new.context_of(ctx.classification)
        a = new._inputs(ctx, context, 1.7e9 + 1e6)
        b = old._inputs(ctx, context, 1.7e9 + 1e6)
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))
        assert msgspec.to_builtins(new.select(ctx)) == msgspec.to_builtins(old.select(ctx))


def fold(selectors: list[Any], evs: list[RewardEvent]) -> None:
    for event in evs:
        for selector in selectors:
            selector.observe(event)


def test_ivf_and_tail_decide_identically() -> None:
    models = pool(12)
    sels = pair({"source_weights": {"failure": 0.5}}, models)
    fold(sels, events(models, FIRST_TRAIN + 700))
    assert sels[0].memory.index is not None and sels[0].memory.n > sels[0].memory.built  # both parts
    assert_same(sels, queries(models, 300))


def test_tail_only_with_fewer_rows_than_k() -> None:
    models = pool(5)
    sels = pair({}, models)
    fold(sels, events(models, 60))
    assert sels[0].memory.index is None and sels[0].memory.n < sels[0].k
    assert_same(sels, queries(models, 100))


def test_nothing_remembered_yet() -> None:
    models = pool(4)
    assert_same(pair({}, models), queries(models, 30))


@pytest.mark.parametrize(
    "options",
    [
        {"lam": 0.5, "ctx_weight": 0.5, "ctx_cap": None},
        {"kernel": "absolute", "temp": 0.05, "k": 7},
        {"conflict_z": 1.0},
    ],
)
def test_train_rows_half_life_and_options(options: dict[str, Any]) -> None:
    models = pool(8)
    now = [1.7e9 + 5000.0]
    sels = pair({"half_life_s": 900.0, **options}, models, clock=lambda: now[0])
    rng = np.random.default_rng(7)
    centres = np.random.default_rng(99).standard_normal((40, DIM)).astype(np.float32)
    train = unit(rng, centres, 300)
    rewards = rng.random((300, 3))
    mask = rng.random((300, 3)) < 0.8
    for sel in sels:
        sel.prior_rows(train, [m.name for m in models[:3]], rewards, mask)
    fold(sels, events(models, 900, seed=1))
    assert_same(sels, queries(models, 150))


def test_new_model_and_reordered_subset() -> None:
    models = pool(6)
    sels = pair({}, models)
    fold(sels, events(models, 500))
    late = pool(9)[6:]  # never rewarded: no column in the memory yet
    ctxs = queries([*late, *models[::-2]], 80)  # a subset, out of slot order
    assert_same(sels, ctxs)


def test_compaction_past_max_rows() -> None:
    models = pool(3)
    sels = pair({"max_rows": 2 * FIRST_TRAIN}, models)
    fold(sels, events(models, 2 * FIRST_TRAIN + 300, seed=2))
    assert sels[0].memory.n < 2 * FIRST_TRAIN + 300  # compacted
    assert_same(sels, queries(models, 120))
