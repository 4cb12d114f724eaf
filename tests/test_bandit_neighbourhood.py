"""The per-prompt ``neighbourhood`` selector (in progress: not yet the server's default).

It learns which model is best for a region of embedding space, where tier-context Thompson
cannot tell two regions of one tier apart; its state is a fold over reward events, so a rebuild
gives the same decisions; with no embedding it is plain Thompson.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from layers.bandit.base import RewardEvent, SelectionContext, build_selector
from layers.bandit.neighbourhood import NeighbourhoodSelector
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification
from tests.test_bandit import POOL

DIM = 384
RNG = np.random.default_rng(0)
CENTRES = {name: RNG.standard_normal(DIM).astype(np.float32) for name in ("a", "b")}


def near(centre: str, rng: np.random.Generator) -> np.ndarray:
    vec = CENTRES[centre] + 0.3 * rng.standard_normal(DIM).astype(np.float32)
    return vec / np.linalg.norm(vec)


def context(embedding: np.ndarray | None) -> SelectionContext:
    return SelectionContext(
        classification=Classification(tier="medium", score=0.5, backend="test"),
        candidates=POOL,
        prompt_tokens=400,
        expected_completion_tokens=200,
        cost_weight=0.0,
        embedding=embedding,
    )


def region_events(n: int, seed: int) -> list[RewardEvent]:
    """In region a only ``small`` answers well, in region b only ``big``; all one tier."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        region = "a" if i % 2 == 0 else "b"
        vector = near(region, rng)
        for model in ("small", "mid", "big"):
            good = (region == "a" and model == "small") or (region == "b" and model == "big")
            events.append(
                RewardEvent(
                    request_id=f"r{i}",  # one request, every model rated: one row
                    context="medium",
                    model=model,
                    reward=1.0 if good else 0.0,
                    ts=1_700_000_000 + i,
                    embedding=vector.tobytes(),
                )
            )
    return events


def test_registered_and_learns_per_region_where_the_tier_cannot() -> None:
    selector = build_selector("neighbourhood", {"seed": 1}, POOL)
    assert isinstance(selector, NeighbourhoodSelector)
    tier_only = ThompsonSelector({"seed": 1}, POOL)
    for event in region_events(120, seed=2):
        selector.observe(event)
        tier_only.observe(msgspec.structs.replace(event, embedding=None))
    rng = np.random.default_rng(3)
    picks = {
        region: [selector.select(context(near(region, rng))).model for _ in range(40)] for region in "ab"
    }
    assert picks["a"].count("small") >= 36 and picks["b"].count("big") >= 36
    plain = [tier_only.select(context(None)).model for _ in range(80)]
    assert max(plain.count(m) for m in ("small", "mid", "big")) < 72  # one tier: no region to tell apart


def test_rebuild_gives_the_live_decisions() -> None:
    events = region_events(60, seed=4)
    clock = lambda: 1_700_000_100.0  # noqa: E731 - the draw bank refreshes by time
    live = NeighbourhoodSelector({"seed": 5}, POOL, clock=clock)
    for event in events:
        live.observe(event)
    rebuilt = NeighbourhoodSelector({"seed": 5}, POOL, clock=clock)
    rebuilt.rebuild(events)
    rng_a, rng_b = np.random.default_rng(6), np.random.default_rng(6)
    for region in "abab":
        x, y = live.select(context(near(region, rng_a))), rebuilt.select(context(near(region, rng_b)))
        assert (x.model, x.ranked, x.sampled) == (y.model, y.ranked, y.sampled)


def test_without_an_embedding_it_is_plain_thompson() -> None:
    """Same posteriors as Thompson's; its propensity estimate draws differently, so compare rates."""
    neighbourhood = NeighbourhoodSelector({"seed": 8}, POOL)
    thompson = ThompsonSelector({"seed": 8}, POOL)
    for event in region_events(30, seed=9):
        plain = msgspec.structs.replace(event, embedding=None)
        neighbourhood.observe(plain)
        thompson.observe(plain)
    now = 1_700_000_100.0
    for x, y in zip(neighbourhood.posterior("medium", now), thompson.posterior("medium", now), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    first = neighbourhood.select(context(None)), thompson.select(context(None))
    assert first[0].sampled == first[1].sampled  # the decision's own draw is Thompson's
    rates = [
        [sel.select(context(None)).model for _ in range(300)].count("big") / 300
        for sel in (neighbourhood, thompson)
    ]
    assert abs(rates[0] - rates[1]) < 0.12


def test_past_the_ivf_and_the_row_bound_a_rebuild_finds_the_same_neighbours() -> None:
    """9,000 requests: the memory trains its IVF-SQ8 index (4,096 rows), then hits max_rows (8,192)
    and drops its oldest quarter; folding the same events again gives the same rows and neighbours."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((9000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    events = [
        RewardEvent(
            request_id=f"q{i}",
            context="medium",
            model=("small", "mid", "big")[i % 3],
            reward=float(i % 2),
            ts=1_700_000_000 + i,
            embedding=vectors[i],
        )
        for i in range(9000)
    ]
    selectors = []
    for _ in range(2):
        selector = NeighbourhoodSelector({"seed": 1, "max_rows": 8192}, POOL)
        selector.rebuild(events)
        selectors.append(selector)
    first, second = (s.memory for s in selectors)
    assert first.index is not None and first.n == second.n == 9000 - 2048
    assert first.request_of[0] == "q2048"  # the oldest quarter went
    assert first.nbytes() < 9000 * (2 * DIM + DIM + 8 + 8 * 3 + 100) * 1.5
    for query in vectors[::500]:
        rows_a, sims_a = first.search(query, 16)
        rows_b, sims_b = second.search(query, 16)
        assert rows_a.tolist() == rows_b.tolist() and np.array_equal(sims_a, sims_b)
    # a remembered vector finds itself first (8-bit codes keep the nearest neighbour)
    rows, sims = first.search(vectors[8999], 4)
    assert first.request_of[int(rows[np.argmax(sims)])] == "q8999"


def _regressed_small(options: dict, live: int, gap_s: float = 1.0) -> float:
    """Mean of ``small`` in region a after train rows say it is right there and ``live`` live
    rewards (``gap_s`` apart) say it now fails."""
    rng = np.random.default_rng(3)
    clock = [1_700_000_000.0]
    selector = NeighbourhoodSelector({"seed": 0, "k": 20, **options}, POOL, clock=lambda: clock[0])
    train = np.stack([near("a", rng) for _ in range(40)])
    models = ["small", "mid", "big"]
    selector.prior_rows(train, models, np.tile([1.0, 0.0, 0.0], (40, 1)))
    for i in range(live):
        clock[0] = 1_700_000_000.0 + i * gap_s
        selector.observe(
            RewardEvent(
                request_id=f"live{i}",
                context="medium",
                model="small",
                reward=0.0,
                ts=clock[0],
                embedding=near("a", rng).tobytes(),
            )
        )
    alpha, beta, *_ = selector._inputs(context(near("a", rng)), "medium")
    return float(alpha[0] / (alpha[0] + beta[0]))


def test_train_rows_give_way_to_live_evidence_that_contradicts_them() -> None:
    off = {"drift_tolerance": None}
    kept = _regressed_small(off, live=60)  # 20 neighbours x 16: the benchmark outweighs 20 live rows
    assert kept > 0.7  # (the tier context, capped at 64 observations of 0, pulls it down a little)
    # the default drift guard: 60 live zeros where the train rows say 1.0 move those rows' mean
    assert _regressed_small({}, live=60) < 0.1
    # ... but not after 5 live zeros (fewer than drift_min_events recent events)
    assert _regressed_small({}, live=5) > 0.7
    assert _regressed_small({**off, "prior_takeover": 2.0}, live=60) < 0.3
    # prior_fades: after 10 half-lives the train rows weigh 2^-10, the live ones (recent) do not
    faded = _regressed_small({**off, "half_life_s": 100.0, "prior_fades": True}, live=60, gap_s=20.0)
    assert faded < 0.2
    unfaded = _regressed_small({**off, "half_life_s": 100.0}, live=60, gap_s=20.0)
    assert unfaded > 0.7


def _guarded(events: list[RewardEvent], **options: Any) -> NeighbourhoodSelector:
    rng = np.random.default_rng(5)
    selector = NeighbourhoodSelector({"seed": 0, "k": 20, **options}, POOL, clock=lambda: 1_700_000_100.0)
    train = np.stack([near("a", rng) for _ in range(40)])
    selector.prior_rows(train, ["small", "mid", "big"], np.tile([1.0, 0.5, 0.5], (40, 1)))
    for event in events:
        selector.observe(event)
    return selector


def test_the_drift_guard_is_a_fold_over_the_events() -> None:
    """forget subtracts what observe added, so a rebuild from the stored events (re-rated ones
    replaced) gives the live guard and posteriors back; within the tolerance it changes nothing."""
    rng = np.random.default_rng(6)
    events = [
        RewardEvent(
            request_id=f"e{i}",
            context="medium",
            model="small" if i % 3 else "mid",
            reward=0.0 if i % 3 else 0.5,
            ts=1_700_000_000.0 + i,
            embedding=near("a", rng).tobytes(),
        )
        for i in range(60)
    ]
    live = _guarded(events)
    rerated = [msgspec.structs.replace(e, reward=1.0 - e.reward, ts=e.ts + 60.0) for e in events[10:20]]
    for old, new in zip(events[10:20], rerated, strict=True):  # feedback replaced (POST /feedback again)
        live.forget(old)
        live.observe(new)
    rebuilt = _guarded(events[:10] + rerated + events[20:])
    assert live.guard is not None and rebuilt.guard is not None
    assert live.guard.active and live.guard.shift[live._index["small"]] > 0.5
    assert np.allclose(live.guard.shift, rebuilt.guard.shift)
    probe = context(near("a", rng))
    for got, want in zip(
        live._inputs(probe, "medium")[:2], rebuilt._inputs(probe, "medium")[:2], strict=True
    ):
        assert np.allclose(got, want)
    # rewards as the train rows predict them: no shift, the same posteriors as with the guard off
    agree = [msgspec.structs.replace(e, model="small", reward=1.0) for e in events]
    on = _guarded(agree)
    assert on.guard is not None and not on.guard.active
    off = _guarded(agree, drift_tolerance=None)
    for got, want in zip(on._inputs(probe, "medium")[:2], off._inputs(probe, "medium")[:2], strict=True):
        assert np.array_equal(got, want)


def test_ctx_cap_trained_applies_once_train_rows_are_loaded() -> None:
    """The opt-in for pools that add models later: with a train memory the tier context counts
    at most ``ctx_cap_trained`` observations (ops/bench/l2_tune.py --onboard)."""
    assert NeighbourhoodSelector({"seed": 0, "ctx_cap_trained": 2.0}, POOL).ctx_cap == 64.0
    assert _guarded([]).ctx_cap == 64.0
    assert _guarded([], ctx_cap_trained=2.0).ctx_cap == 2.0


def test_a_rebuild_batches_the_guards_searches_and_gets_the_live_fold_bit_for_bit() -> None:
    """Past the IVF's first training (4,096 train rows) and with a flat tail, the batched searches
    of ``rebuild`` give the guard exactly the sums that one search per live event gave."""
    rng = np.random.default_rng(8)
    train = np.stack([near("a" if i % 2 else "b", rng) for i in range(4500)])
    rewards = np.stack([np.full(4500, 1.0), np.full(4500, 0.6), rng.random(4500)], axis=1)
    events = [
        RewardEvent(
            request_id=f"g{i}",
            context="medium",
            model=("small", "mid", "big")[i % 3],
            reward=float(i % 4 == 0),
            ts=1_700_000_000.0 + i,
            embedding=near("a" if i % 5 else "b", rng).tobytes(),
        )
        for i in range(300)
    ]
    live = NeighbourhoodSelector({"seed": 0}, POOL)
    live.prior_rows(train, ["small", "mid", "big"], rewards)
    assert live.prior.index is not None and live.prior.n > live.prior.built  # IVF and tail
    for event in events:
        live.observe(event)
    rebuilt = NeighbourhoodSelector({"seed": 0}, POOL)
    rebuilt.prior_rows(train, ["small", "mid", "big"], rewards)
    rebuilt.rebuild(events)
    assert live.guard is not None and rebuilt.guard is not None and live.guard.active
    for name in ("s", "q", "n", "shift"):
        assert np.array_equal(getattr(live.guard, name), getattr(rebuilt.guard, name)), name


def _borrowing(events: list[RewardEvent], **options: Any) -> NeighbourhoodSelector:
    """Train rows for ``small`` (1.0 in region a, 0.2 in b) and ``mid`` (0.3, 0.9); ``big`` has none."""
    rng = np.random.default_rng(9)
    selector = NeighbourhoodSelector({"seed": 0, "k": 20, "borrow_min_events": 5.0, **options}, POOL)
    regions = ["a" if i % 2 else "b" for i in range(80)]
    train = np.stack([near(r, rng) for r in regions])
    rewards = np.array([[1.0, 0.3] if r == "a" else [0.2, 0.9] for r in regions])
    selector.prior_rows(train, ["small", "mid"], rewards)
    for event in events:
        selector.observe(event)
    return selector


def test_a_model_without_train_rows_borrows_those_of_the_model_it_tracks() -> None:
    """The opt-in ``borrow_min_events``: ``big`` scores 0.1 below ``small`` in both regions, so
    ``small`` becomes its reference (its residuals vary least), offset -0.1, and ``big`` gets
    small's train evidence capped at ``borrow_cap``; the sums are a fold, so forget and a rebuild
    give the same reference."""
    rng = np.random.default_rng(10)
    events = [
        RewardEvent(
            request_id=f"n{i}",
            context="medium",
            model="big",
            reward=0.9 if i % 2 else 0.1,
            ts=1_700_000_000.0 + i,
            embedding=near("a" if i % 2 else "b", rng).tobytes(),
        )
        for i in range(12)
    ]
    small, big = 0, 2
    live = _borrowing(events)
    assert live.borrow is not None and set(live.borrow.ref) == {big}
    ref, offset = live.borrow.ref[big]
    assert ref == small and abs(offset + 0.1) < 0.05
    # fewer than borrow_min_events rewards: no reference yet
    assert _borrowing(events[:4]).borrow.ref == {}  # type: ignore[union-attr]
    # a re-rated reward replaced (forget, observe) equals a rebuild from the stored events
    rerated = msgspec.structs.replace(events[3], reward=0.5, ts=events[3].ts + 60.0)
    live.forget(events[3])
    live.observe(rerated)
    rebuilt = _borrowing([])
    rebuilt.rebuild([*events[:3], rerated, *events[4:]])
    assert rebuilt.borrow is not None
    assert live.borrow.ref.keys() == rebuilt.borrow.ref.keys()
    assert np.allclose(live.borrow.sums[big], rebuilt.borrow.sums[big])
    # in region a big's train column is small's mean less 0.1, at most 64 observations
    query = near("a", rng)
    train = live._neighbour_sums(live.prior, query)
    assert train is not None and train[0, big] == 0.0 and train[0, small] + train[1, small] > 64.0
    offset = live.borrow.ref[big][1]  # after the re-rating
    borrowed = live.borrow.apply(train.copy())
    assert abs(borrowed[:, big].sum() - 64.0) < 1e-9
    assert abs(borrowed[0, big] / 64.0 - (train[0, small] / train[:, small].sum() + offset)) < 1e-9
    on = live._inputs(context(query), "medium")
    off = _borrowing(events, borrow_min_events=None)._inputs(context(query), "medium")
    assert on[0][big] / (on[0][big] + on[1][big]) > 0.7  # near small's mean less 0.1 (0.87)
    assert on[0][big] + on[1][big] > off[0][big] + off[1][big] + 60.0  # far sharper than its own rows
    assert np.array_equal(on[0][:2], off[0][:2]) and np.array_equal(on[1][:2], off[1][:2])
    assert NeighbourhoodSelector({"seed": 0}, POOL).borrow is None  # off by default
