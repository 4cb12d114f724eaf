"""Layer 2 Thompson selector: conjugate updates, decay, forget/rebuild exactness, priors, cost, propensity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from layers.bandit.base import RewardEvent, SelectionContext, build_selector
from layers.bandit.thompson import COST_WEIGHT_PRESETS, ThompsonSelector, tier_prior_mean
from layers.classifier.base import Classification
from layers.types import ModelSpec

POOL = [
    ModelSpec(
        name="small",
        litellm_model="x/small",
        tier="simple",
        input_price_per_mtok=0.1,
        output_price_per_mtok=0.2,
    ),
    ModelSpec(
        name="mid", litellm_model="x/mid", tier="medium", input_price_per_mtok=1.0, output_price_per_mtok=2.0
    ),
    ModelSpec(
        name="big",
        litellm_model="x/big",
        tier="complex",
        input_price_per_mtok=10.0,
        output_price_per_mtok=30.0,
    ),
]


def ctx(tier: str = "medium", cost_weight: float | None = None, task: str | None = None) -> SelectionContext:
    return SelectionContext(
        classification=Classification(tier=tier, score=0.5, backend="test", task_type=task),
        candidates=POOL,
        prompt_tokens=400,
        expected_completion_tokens=200,
        cost_weight=cost_weight,
    )


def ev(model: str, reward: float, ts: float, context: str = "medium", rid: str = "r") -> RewardEvent:
    return RewardEvent(request_id=rid, context=context, model=model, reward=reward, ts=ts)


def random_events(n: int, seed: int) -> list[RewardEvent]:
    rnd = random.Random(seed)
    return [
        ev(
            rnd.choice(["small", "mid", "big"]),
            rnd.random(),
            1_700_000_000 + rnd.uniform(0, 86_400 * 30),
            rnd.choice(["simple", "medium", "complex"]),
            rid=f"r{i}",
        )
        for i in range(n)
    ]


def test_registry_builds_thompson() -> None:
    sel = build_selector("thompson", {"seed": 1}, POOL)
    assert isinstance(sel, ThompsonSelector)
    assert sel.select(ctx()).model in {"small", "mid", "big"}


def test_fractional_conjugate_update() -> None:
    sel = ThompsonSelector({"prior_strength": 4.0}, POOL)
    a0, b0 = sel.posterior("medium")
    sel.observe(ev("mid", 0.75, 1.0))
    sel.observe(ev("mid", 0.5, 2.0))
    a, b = sel.posterior("medium")
    assert a[1] == pytest.approx(a0[1] + 1.25)
    assert b[1] == pytest.approx(b0[1] + 0.75)
    assert a[0] == a0[0] and b[2] == b0[2]  # other arms untouched


def test_tier_prior_optimistic_for_capable_models() -> None:
    opts = ThompsonSelector({}, POOL).options
    assert tier_prior_mean("medium", POOL[1], opts) == pytest.approx(0.8)
    assert tier_prior_mean("medium", POOL[2], opts) == pytest.approx(0.85)
    assert tier_prior_mean("medium", POOL[0], opts) == pytest.approx(0.4)
    assert tier_prior_mean("complex", POOL[0], opts) == pytest.approx(0.2)
    sel = ThompsonSelector({"prior_strength": 10.0}, POOL)
    a, b = sel.posterior("complex")
    assert a + b == pytest.approx(np.full(3, 10.0))
    assert list(a / (a + b)) == pytest.approx([0.2, 0.4, 0.8])


def test_fitted_priors_file_overrides_tier_prior(tmp_path) -> None:
    path = tmp_path / "priors.json"
    path.write_text(json.dumps({"contexts": {"simple": {"small": {"alpha": 9.0, "beta": 1.0}}}}))
    sel = ThompsonSelector({"priors_path": str(path)}, POOL)
    a, b = sel.posterior("simple")
    assert (a[0], b[0]) == (9.0, 1.0)
    assert a[1] / (a[1] + b[1]) == pytest.approx(0.85)  # unnamed pairs keep the tier prior


def _priors_file(tmp_path, weight: float) -> str:
    path = tmp_path / f"priors_{weight:.0f}.json"
    prior = {"alpha": 1.0 + 0.7 * weight, "beta": 1.0 + 0.3 * weight}
    path.write_text(json.dumps({"contexts": {"simple": {"small": prior}}}))
    return str(path)


def test_heavy_fitted_prior_under_a_half_life_is_warned_about(tmp_path, caplog) -> None:
    """A half-life fades only live rewards; a prior of thousands of train rows would never let go."""
    with caplog.at_level("WARNING", logger="compass.bandit"):
        ThompsonSelector({"priors_path": _priors_file(tmp_path, 5000), "half_life_s": 3600.0}, POOL)
    assert "compass train --cap 100" in caplog.text and "5000 observations" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="compass.bandit"):
        ThompsonSelector({"priors_path": _priors_file(tmp_path, 100), "half_life_s": 3600.0}, POOL)
        ThompsonSelector({"priors_path": _priors_file(tmp_path, 5000)}, POOL)  # no half-life: no conflict
    assert caplog.text == ""


def test_half_life_discounts_old_observations() -> None:
    sel = ThompsonSelector({"half_life_s": 100.0, "prior_strength": 2.0}, POOL)
    a0, _ = sel.posterior("medium")
    sel.observe(ev("mid", 1.0, 1000.0))
    a_now, _ = sel.posterior("medium", now=1000.0)
    a_later, _ = sel.posterior("medium", now=1100.0)
    assert a_now[1] - a0[1] == pytest.approx(1.0)
    assert a_later[1] - a0[1] == pytest.approx(0.5)


def test_decay_survives_rescaling_far_in_the_future() -> None:
    sel = ThompsonSelector({"half_life_s": 1.0}, POOL)
    sel.observe(ev("mid", 1.0, 0.0))
    sel.observe(ev("mid", 1.0, 1000.0))  # forces a rescale of the reference time
    a0, _ = sel._prior("medium")
    a, _ = sel.posterior("medium", now=1001.0)
    assert a[1] - a0[1] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("half_life", [None, 3600.0])
def test_rebuild_in_any_order_equals_live_state(half_life: float | None) -> None:
    events = random_events(300, seed=3)
    live = ThompsonSelector({"half_life_s": half_life}, POOL)
    for e in events:
        live.observe(e)
    shuffled = events[:]
    random.Random(9).shuffle(shuffled)
    rebuilt = ThompsonSelector({"half_life_s": half_life}, POOL)
    rebuilt.rebuild(shuffled)
    now = 1_700_000_000 + 86_400 * 31
    for context in ("simple", "medium", "complex"):
        for x, y in zip(live.posterior(context, now), rebuilt.posterior(context, now), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_forget_undoes_observe() -> None:
    sel = ThompsonSelector({"half_life_s": 600.0}, POOL)
    for e in random_events(50, seed=5):
        sel.observe(e)
    now = 1_700_000_000 + 86_400 * 30.5 + 60
    before = sel.posterior("medium", now)
    pulls = sel._states["medium"].pulls.copy()
    extra = ev("big", 0.3, 1_700_000_000 + 86_400 * 30.5, rid="again")
    sel.observe(extra)
    assert not np.allclose(sel.posterior("medium", now)[0], before[0])
    sel.forget(extra)
    for x, y in zip(before, sel.posterior("medium", now), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    assert (sel._states["medium"].pulls == pulls).all()


def choice_counts(sel: ThompsonSelector, c: SelectionContext, n: int) -> dict[str, int]:
    counts = {m.name: 0 for m in POOL}
    for _ in range(n):
        counts[sel.select(c).model] += 1
    return counts


def test_cost_weight_moves_choice_to_cheaper_models() -> None:
    sel = ThompsonSelector({"seed": 0, "propensity_samples": 0}, POOL)
    best = choice_counts(sel, ctx("medium", cost_weight=COST_WEIGHT_PRESETS["best"]), 400)
    cheap = choice_counts(sel, ctx("medium", cost_weight=COST_WEIGHT_PRESETS["cheap"]), 400)
    assert best["big"] > 150  # without cost, the (slightly more optimistic) big model often wins
    assert cheap["big"] < 10  # with cost, the expensive model is almost never worth it
    assert cheap["mid"] > cheap["small"]  # the capable mid-priced model beats the pessimistic cheap one


def test_learning_moves_choice_to_the_rewarded_model() -> None:
    sel = ThompsonSelector({"seed": 1, "propensity_samples": 0, "cost_weight": 0.0}, POOL)
    for i in range(60):
        sel.observe(ev("small", 1.0, float(i)))
        sel.observe(ev("mid", 0.0, float(i)))
        sel.observe(ev("big", 0.2, float(i)))
    assert choice_counts(sel, ctx("medium"), 200)["small"] > 190


def test_propensity_is_a_sane_probability() -> None:
    sel = ThompsonSelector({"seed": 2, "propensity_samples": 256}, POOL)
    shares = sel.shares(ctx("medium", cost_weight=0.3), 20_000)
    assert shares.sum() == pytest.approx(1.0)
    counts = choice_counts(sel, ctx("medium", cost_weight=0.3), 2000)
    for i, m in enumerate(POOL):
        assert counts[m.name] / 2000 == pytest.approx(shares[i], abs=0.04)
    props = [sel.select(ctx("medium", cost_weight=0.3)) for _ in range(200)]
    for s in props:
        assert 0.0 < s.propensity <= 1.0
        assert s.propensity == pytest.approx(shares[[m.name for m in POOL].index(s.model)], abs=0.12)


def test_selection_records_samples_utilities_and_ranking() -> None:
    s = ThompsonSelector({"seed": 4}, POOL).select(ctx("complex"))
    assert set(s.sampled) == set(s.utilities) == {"small", "mid", "big"}
    assert s.ranked[0] == s.model and sorted(s.ranked) == ["big", "mid", "small"]
    assert [s.utilities[m] for m in s.ranked] == sorted(s.utilities.values(), reverse=True)
    assert s.context == "complex" and s.method == "thompson" and s.cost_weight == pytest.approx(0.3)


def test_seeded_selectors_are_deterministic() -> None:
    a = ThompsonSelector({"seed": 7}, POOL)
    b = ThompsonSelector({"seed": 7}, POOL)
    for tier in ["simple", "medium", "complex"] * 20:
        sa, sb = a.select(ctx(tier)), b.select(ctx(tier))
        assert (sa.model, sa.sampled, sa.propensity) == (sb.model, sb.sampled, sb.propensity)


def test_tier_task_context_and_snapshot_is_json() -> None:
    sel = ThompsonSelector({"context": "tier_task", "seed": 0, "snapshot_samples": 500}, POOL)
    s = sel.select(ctx("simple", task="code"))
    assert s.context == "simple:code"
    sel.observe(ev("small", 0.9, 10.0, context="simple:code"))
    snap = json.loads(json.dumps(sel.snapshot()))
    row = snap["contexts"]["simple:code"]["small"]
    assert row["pulls"] == 1 and row["last_update"] == 10.0
    assert row["ci95"][0] < row["mean"] < row["ci95"][1]
    assert sum(m["share"] for m in snap["contexts"]["simple:code"].values()) == pytest.approx(1.0)


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown thompson options"):
        ThompsonSelector({"cost_weigth": 1.0}, POOL)
