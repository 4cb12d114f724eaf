"""Layer 2: contextual Thompson sampling over the model pool, with a tier prior and a cost term.

State per (context, model) is a Beta posterior over answer quality. Rewards are fractional
(``alpha += w·r``, ``beta += w·(1-r)``) and optionally discounted with a half-life. The state is
an order-independent fold: each event adds ``w·2^((ts - t_ref)/half_life)·r`` to a running sum,
and the posterior at time ``now`` multiplies the sums by ``2^((t_ref - now)/half_life)``. Adding is
commutative, so ``rebuild`` from the reward rows reproduces the live posteriors (to float
rounding), and ``forget`` subtracts exactly what ``observe`` added.

Prior (per context, whose first ``:``-separated part is the Layer 1 tier; ``gap`` = request
tier index - model tier index, tiers simple=0 < medium=1 < complex=2)::

    gap <= 0 (model of the tier or above): mean = min(prior_max, prior_high + prior_bonus·(-gap))
    gap >= 1 (weaker model):                mean = max(prior_floor, prior_low - prior_step·(gap - 1))
    alpha0 = prior_strength · mean,  beta0 = prior_strength · (1 - mean)

Defaults: prior_high 0.8, prior_bonus 0.05, prior_max 0.9, prior_low 0.4, prior_step 0.2,
prior_floor 0.05, prior_strength 4. A fitted ``priors_path`` (JSON from ``compass train``)
replaces the tier prior for the (context, model) pairs it names.

Choice: ``θ_i ~ Beta(alpha_i, beta_i)``, ``u_i = θ_i - cost_weight · cost_i / max_j cost_j`` where
``cost_i = ModelSpec.expected_cost(prompt_tokens, expected_completion_tokens)``; the model with
the largest ``u`` wins and ``ranked`` orders all candidates by ``u``.

Propensity (``Selection.propensity``, for IPS on the logs) is a Monte Carlo estimate of
P(the chosen model wins) from ``propensity_samples`` joint posterior draws. Drawing them afresh
costs ~0.1 ms at 40 models and ~0.25 ms at 100, so above 1,024 draws a decision (more than 16
models at 64 samples) each context keeps a bank of draws instead: a column is redrawn when its
posterior changed (every call under a half-life, where posteriors move with time), and 1/8 of
the rows are redrawn on every call, so consecutive estimates decorrelate within 8 decisions.
Every row is always a draw from the current posteriors, so each estimate stays unbiased.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from layers.bandit.base import COST_WEIGHT_PRESETS, RewardEvent, Selection, SelectionContext, Selector
from layers.classifier.base import Classification
from layers.types import TIER_INDEX, TIERS, ModelSpec

__all__ = ["COST_WEIGHT_PRESETS", "ThompsonSelector", "tier_prior_mean"]

log = logging.getLogger("compass.bandit")

DEFAULTS: dict[str, Any] = {
    "context": "tier",  # tier | tier_task
    "prior_strength": 4.0,
    "prior_high": 0.8,
    "prior_bonus": 0.05,
    "prior_max": 0.9,
    "prior_low": 0.4,
    "prior_step": 0.2,
    "prior_floor": 0.05,
    "priors_path": None,
    "cost_weight": COST_WEIGHT_PRESETS["balanced"],
    "half_life_s": None,
    "propensity_samples": 64,  # Monte Carlo draws per decision for Selection.propensity (0: off)
    "snapshot_samples": 2000,
    "snapshot_prompt_tokens": 500,
    "snapshot_completion_tokens": 256,
    "source_weights": {},  # e.g. {"failure": 0.5}; sources not named weigh 1
    "seed": None,
}
# Up to this many draws per decision (64 samples x 16 models) the propensity draws are all fresh.
_FRESH_DRAWS_MAX = 1024
# Rescale the decay reference once the newest event is this many half-lives past it (2^256 is safe).
_RESCALE_HALF_LIVES = 256.0
_NAME = operator.attrgetter("name")
# Fitted priors heavier than this (pseudo-observations per arm) outweigh a half-life's live evidence.
HEAVY_PRIOR = 300.0


def tier_prior_mean(request_tier: str, model: ModelSpec, options: dict[str, Any]) -> float:
    """Prior mean quality of ``model`` for a request of ``request_tier`` (see module docstring)."""
    gap = TIER_INDEX[request_tier] - TIER_INDEX[model.tier]
    if gap <= 0:
        return min(float(options["prior_max"]), options["prior_high"] + options["prior_bonus"] * (-gap))
    return max(float(options["prior_floor"]), options["prior_low"] - options["prior_step"] * (gap - 1))


class _ContextState:
    """Running sums for one context, one slot per known model (arrays grow with the index)."""

    __slots__ = ("last", "pulls", "sa", "sb", "sw")

    def __init__(self, size: int) -> None:
        self.sa = np.zeros(size)  # Σ decayed w·r
        self.sb = np.zeros(size)  # Σ decayed w·(1-r)
        self.sw = np.zeros(size)  # Σ decayed w (effective pulls)
        self.pulls = np.zeros(size, dtype=np.int64)  # raw count of events
        self.last = np.full(size, np.nan)  # newest event ts (forget does not roll it back)

    def grow(self, size: int) -> None:
        extra = size - len(self.sa)
        if extra > 0:
            self.sa = np.concatenate([self.sa, np.zeros(extra)])
            self.sb = np.concatenate([self.sb, np.zeros(extra)])
            self.sw = np.concatenate([self.sw, np.zeros(extra)])
            self.pulls = np.concatenate([self.pulls, np.zeros(extra, dtype=np.int64)])
            self.last = np.concatenate([self.last, np.full(extra, np.nan)])


class _DrawBank:
    """Posterior draws of one context for the propensity estimate: (samples, slots), with the
    (alpha, beta) each column was drawn from; a column whose posterior moved is redrawn."""

    __slots__ = ("a", "b", "draws", "row")

    def __init__(self, samples: int, size: int) -> None:
        self.draws = np.zeros((samples, size))
        self.a = np.full(size, np.nan)
        self.b = np.full(size, np.nan)
        self.row = 0

    def grow(self, size: int) -> None:
        extra = size - self.draws.shape[1]
        if extra > 0:
            self.draws = np.concatenate([self.draws, np.zeros((self.draws.shape[0], extra))], axis=1)
            self.a = np.concatenate([self.a, np.full(extra, np.nan)])
            self.b = np.concatenate([self.b, np.full(extra, np.nan)])


class ThompsonSelector(Selector):
    """Beta-Bernoulli Thompson sampling with fractional rewards, tier priors, cost and decay."""

    name = "thompson"

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        pool: list[ModelSpec] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        unknown = set(options or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown thompson options: {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **(options or {})}
        if self.options["context"] not in ("tier", "tier_task"):
            raise ValueError("thompson option 'context' must be 'tier' or 'tier_task'")
        half_life = self.options["half_life_s"]
        self.half_life: float | None = float(half_life) if half_life else None
        self.cost_weight = float(self.options["cost_weight"])
        self.samples = int(self.options["propensity_samples"])
        self.source_weights = {k: float(v) for k, v in dict(self.options["source_weights"]).items()}
        self.pool = list(pool or [])
        self.clock = clock or time.time
        self.rng = np.random.default_rng(self.options["seed"])
        self._index: dict[str, int] = {m.name: i for i, m in enumerate(self.pool)}
        self._specs: dict[str, ModelSpec] = {m.name: m for m in self.pool}
        self._fitted = self._load_priors(self.options["priors_path"])
        self._warn_heavy_prior_under_decay()
        self._prior_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._cand_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = {}
        self.reset()

    # ---- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        self._states: dict[str, _ContextState] = {}
        self._t_ref: float | None = None
        self._banks: dict[str, _DrawBank] = {}

    def context_of(self, classification: Classification) -> str:
        if self.options["context"] == "tier_task":
            return f"{classification.tier}:{classification.task_type or 'general'}"
        return classification.tier

    def _state(self, context: str) -> _ContextState:
        state = self._states.get(context)
        if state is None:
            state = self._states[context] = _ContextState(len(self._index))
        return state

    def _slot(self, model: str) -> int:
        slot = self._index.get(model)
        if slot is None:  # a model no longer in the pool: keep its rows so rebuild stays exact
            slot = self._index[model] = len(self._index)
            self._prior_cache.clear()
        return slot

    def _weight(self, event: RewardEvent) -> float:
        """The event's weight against the decay reference (rescaling the sums when far ahead)."""
        w = self.source_weights.get(event.source, 1.0)
        if self.half_life is None:
            return w
        if self._t_ref is None:
            self._t_ref = event.ts
        elif (event.ts - self._t_ref) / self.half_life > _RESCALE_HALF_LIVES:
            scale = 2.0 ** ((self._t_ref - event.ts) / self.half_life)
            for state in self._states.values():
                state.sa *= scale
                state.sb *= scale
                state.sw *= scale
            self._t_ref = event.ts
        return w * 2.0 ** ((event.ts - self._t_ref) / self.half_life)

    def _apply(self, event: RewardEvent, sign: float) -> None:
        reward = min(1.0, max(0.0, float(event.reward)))
        slot = self._slot(event.model)
        state = self._state(event.context)
        state.grow(len(self._index))
        w = sign * self._weight(event)
        state.sa[slot] += w * reward
        state.sb[slot] += w * (1.0 - reward)
        state.sw[slot] += w
        state.pulls[slot] += int(sign)
        if sign > 0 and not (state.last[slot] >= event.ts):
            state.last[slot] = event.ts

    def observe(self, event: RewardEvent) -> None:
        self._apply(event, 1.0)

    def forget(self, event: RewardEvent) -> None:
        self._apply(event, -1.0)

    def rebuild(self, events: Iterable[RewardEvent]) -> None:
        self.reset()
        for event in events:
            self.observe(event)

    def _decay(self, now: float | None) -> float:
        if self.half_life is None or self._t_ref is None:
            return 1.0
        now = self.clock() if now is None else now
        return 2.0 ** ((self._t_ref - now) / self.half_life)

    # ---- priors ------------------------------------------------------------------------------

    def _warn_heavy_prior_under_decay(self) -> None:
        """The half-life fades live rewards, never the fitted prior: a prior worth thousands of
        train rows then pulls every posterior back to the benchmark, and the bandit adapts to a
        regressed model more slowly than with no half-life at all (ops/bench/drift_replay.py)."""
        if self.half_life is None or not self._fitted:
            return
        heaviest = max(
            (a + b - 2.0 for models in self._fitted.values() for a, b in models.values()), default=0.0
        )
        if heaviest > HEAVY_PRIOR:
            log.warning(
                "selector: half_life_s is set but the fitted priors in %s count up to %.0f observations "
                "per model; the half-life fades only live rewards, so routing will keep returning to "
                "the train data. Refit with `compass train --cap 100` to let live feedback win.",
                self.options["priors_path"],
                heaviest,
            )

    @staticmethod
    def _load_priors(path: str | None) -> dict[str, dict[str, tuple[float, float]]]:
        if not path:
            return {}
        data = json.loads(Path(path).read_text())
        return {
            ctx: {m: (float(v["alpha"]), float(v["beta"])) for m, v in models.items()}
            for ctx, models in data.get("contexts", {}).items()
        }

    def _prior(self, context: str) -> tuple[np.ndarray, np.ndarray]:
        """(alpha0, beta0) for every known slot in this context."""
        cached = self._prior_cache.get(context)
        if cached is not None and len(cached[0]) == len(self._index):
            return cached
        tier = context.split(":", 1)[0]
        tier = tier if tier in TIER_INDEX else "medium"
        fitted = self._fitted.get(context) or self._fitted.get(tier) or {}
        strength = float(self.options["prior_strength"])
        a0 = np.empty(len(self._index))
        b0 = np.empty(len(self._index))
        for name, slot in self._index.items():
            if name in fitted:
                a0[slot], b0[slot] = fitted[name]
                continue
            spec = self._specs.get(name)
            mean = tier_prior_mean(tier, spec, self.options) if spec else 0.5
            a0[slot], b0[slot] = strength * mean, strength * (1.0 - mean)
        self._prior_cache[context] = (a0, b0)
        return a0, b0

    def posterior(self, context: str, now: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) arrays over all known slots for ``context`` at time ``now``."""
        a0, b0 = self._prior(context)
        state = self._states.get(context)
        if state is None:
            return a0.copy(), b0.copy()
        state.grow(len(self._index))
        decay = self._decay(now)
        if decay == 1.0:  # no half-life: 1.0·x is x, one numpy call less per array
            return a0 + state.sa, b0 + state.sb
        return a0 + decay * state.sa, b0 + decay * state.sb

    # ---- choice ------------------------------------------------------------------------------

    def _candidates(self, candidates: list[ModelSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(slots, input and output price per token, whether the slots are 0, 1, 2, … in order)."""
        key = tuple(map(_NAME, candidates))
        cached = self._cand_cache.get(key)
        if cached is None:
            for m in candidates:
                self._specs.setdefault(m.name, m)
                self._slot(m.name)
            slots = np.array([self._index[m.name] for m in candidates], dtype=np.int64)
            pin = np.array([m.input_price_per_mtok for m in candidates]) / 1e6
            pout = np.array([m.output_price_per_mtok for m in candidates]) / 1e6
            in_order = bool(np.array_equal(slots, np.arange(len(slots))))
            cached = self._cand_cache[key] = (slots, pin, pout, in_order)
        return cached

    def _utility_inputs(
        self, ctx: SelectionContext, context: str, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        alpha, beta, penalty, weight, _ = self._inputs(ctx, context, now)
        return alpha, beta, penalty, weight

    def _inputs(
        self, ctx: SelectionContext, context: str, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
        """(alpha, beta, cost penalty) of the candidates, the cost weight, and their slots."""
        slots, pin, pout, in_order = self._candidates(ctx.candidates)
        alpha, beta = self.posterior(context, now)
        cost = pin * ctx.prompt_tokens + pout * ctx.expected_completion_tokens
        top = float(cost.max()) if len(cost) else 0.0
        norm = cost / top if top > 0 else np.zeros_like(cost)
        weight = self.cost_weight if ctx.cost_weight is None else float(ctx.cost_weight)
        if not (in_order and len(slots) == len(alpha)):  # else alpha[slots] is alpha itself
            alpha, beta = alpha[slots], beta[slots]
        return np.maximum(alpha, 1e-9), np.maximum(beta, 1e-9), weight * norm, weight, slots

    def _bank_hits(
        self,
        context: str,
        slots: np.ndarray,
        alpha: np.ndarray,
        beta: np.ndarray,
        penalty: np.ndarray,
        best: int,
    ) -> int:
        """How many of the bank's joint draws the chosen candidate wins (see the module docstring)."""
        bank = self._banks.get(context)
        if bank is None:
            bank = self._banks[context] = _DrawBank(self.samples, len(self._index))
        bank.grow(len(self._index))
        stale = (bank.a[slots] != alpha) | (bank.b[slots] != beta)
        if stale.any():
            cols = slots[stale]
            bank.draws[:, cols] = self.rng.beta(alpha[stale], beta[stale], size=(self.samples, len(cols)))
            bank.a[cols] = alpha[stale]
            bank.b[cols] = beta[stale]
        if not stale.all():
            refresh = max(1, self.samples // 8)
            rows = (bank.row + np.arange(refresh)) % self.samples
            bank.row = int((bank.row + refresh) % self.samples)
            bank.draws[np.ix_(rows, slots)] = self.rng.beta(alpha, beta, size=(refresh, len(slots)))
        winners = np.argmax(bank.draws[:, slots] - penalty, axis=1)
        return int(np.count_nonzero(winners == best))

    def _propensity_hits(
        self,
        context: str,
        slots: np.ndarray,
        alpha: np.ndarray,
        beta: np.ndarray,
        penalty: np.ndarray,
        best: int,
    ) -> int:
        """How many of ``samples`` joint posterior draws the chosen candidate wins."""
        if self.samples * len(slots) <= _FRESH_DRAWS_MAX:  # small pools: fresh draws are cheap
            draws = self.rng.beta(alpha, beta, size=(self.samples, len(alpha)))
            return int(np.count_nonzero(np.argmax(draws - penalty, axis=1) == best))
        return self._bank_hits(context, slots, alpha, beta, penalty, best)

    def shares(self, ctx: SelectionContext, samples: int, now: float | None = None) -> np.ndarray:
        """Monte Carlo P(each candidate is chosen) under the current posteriors; sums to 1."""
        context = self.context_of(ctx.classification)
        alpha, beta, penalty, _ = self._utility_inputs(ctx, context, now)
        theta = self.rng.beta(alpha, beta, size=(samples, len(alpha)))
        winners = np.argmax(theta - penalty, axis=1)
        return np.bincount(winners, minlength=len(alpha)) / samples

    def select(self, ctx: SelectionContext) -> Selection:
        if not ctx.candidates:
            raise ValueError("no candidate models to select from")
        context = self.context_of(ctx.classification)
        alpha, beta, penalty, weight, slots = self._inputs(ctx, context)
        theta = self.rng.beta(alpha, beta)
        utility = theta - penalty
        order = np.argsort(-utility, kind="stable")
        best = int(order[0])
        propensity = None
        if self.samples > 0:
            # The decision's own draw counts as one of samples+1, so the estimate is never 0 (IPS-safe).
            hits = self._propensity_hits(context, slots, alpha, beta, penalty, best)
            propensity = (hits + 1) / (self.samples + 1)
        names = list(map(_NAME, ctx.candidates))
        return Selection(
            model=names[best],
            method="thompson",
            context=context,
            candidates=names,
            ranked=list(map(names.__getitem__, order.tolist())),
            utilities=dict(zip(names, utility.tolist(), strict=True)),
            sampled=dict(zip(names, theta.tolist(), strict=True)),
            propensity=propensity,
            cost_weight=weight,
        )

    # ---- admin view --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Posteriors per context and model, with 95% intervals and estimated selection shares."""
        from scipy.stats import beta as beta_dist

        now = self.clock()
        decay = self._decay(now)
        contexts: dict[str, Any] = {}
        names = list(self._index)
        pool = [self._specs[n] for n in names if n in self._specs]
        context_keys = list(dict.fromkeys([*TIERS, *self._states]))
        for context in context_keys:
            alpha, beta = self.posterior(context, now)
            state = self._states.get(context)
            share: dict[str, float] = {}
            if pool:
                tier = context.split(":", 1)[0]
                task = context.split(":", 1)[1] if ":" in context else None
                ctx = SelectionContext(
                    classification=Classification(
                        tier=tier if tier in TIER_INDEX else "medium",
                        score=0.0,
                        backend="snapshot",
                        task_type=task,
                    ),
                    candidates=pool,
                    prompt_tokens=int(self.options["snapshot_prompt_tokens"]),
                    expected_completion_tokens=int(self.options["snapshot_completion_tokens"]),
                )
                estimate = self.shares(ctx, int(self.options["snapshot_samples"]), now)
                share = {m.name: float(s) for m, s in zip(pool, estimate, strict=True)}
            low, high = beta_dist.ppf([[0.025], [0.975]], np.maximum(alpha, 1e-9), np.maximum(beta, 1e-9))
            models = {}
            for name, slot in self._index.items():
                last = float(state.last[slot]) if state is not None else math.nan
                models[name] = {
                    "alpha": float(alpha[slot]),
                    "beta": float(beta[slot]),
                    "mean": float(alpha[slot] / (alpha[slot] + beta[slot])),
                    "ci95": [float(low[slot]), float(high[slot])],
                    "pulls_effective": float(decay * state.sw[slot]) if state is not None else 0.0,
                    "pulls": int(state.pulls[slot]) if state is not None else 0,
                    "last_update": None if math.isnan(last) else last,
                    "share": share.get(name, 0.0),
                    "in_pool": name in self._specs and any(m.name == name for m in self.pool),
                }
            contexts[context] = models
        return {
            "selector": self.name,
            "context_mode": self.options["context"],
            "cost_weight": self.cost_weight,
            "half_life_s": self.half_life,
            "prior_strength": float(self.options["prior_strength"]),
            "priors_path": self.options["priors_path"],
            "share_assumes": {
                "prompt_tokens": int(self.options["snapshot_prompt_tokens"]),
                "completion_tokens": int(self.options["snapshot_completion_tokens"]),
                "cost_weight": self.cost_weight,
            },
            "contexts": contexts,
        }
