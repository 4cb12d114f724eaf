"""The original LLM Compass rule: send each tier to the cheapest model of that tier.

It is the baseline selector until the bandit is configured, and a replay baseline after.
"""

from __future__ import annotations

from typing import Any

from layers.bandit.base import Selection, SelectionContext, Selector
from layers.types import TIER_INDEX, ModelSpec


def price_key(model: ModelSpec) -> float:
    return model.input_price_per_mtok + model.output_price_per_mtok


class StaticTierSelector(Selector):
    name = "static"

    def __init__(self, options: dict[str, Any] | None = None, pool: list[ModelSpec] | None = None) -> None:
        self.options = options or {}

    def select(self, ctx: SelectionContext) -> Selection:
        candidates = ctx.candidates
        if ctx.cost_weight is not None and ctx.cost_weight <= 0.0:
            # compass/best: the strongest model, the cheapest among equals.
            ranked = sorted(candidates, key=lambda m: (-m.capability, price_key(m)))
            return self._selection(ctx, ranked, "static_best")
        if ctx.cost_weight is not None and ctx.cost_weight >= 1.0:
            # compass/cheap: the cheapest model, the strongest among equals.
            ranked = sorted(candidates, key=lambda m: (price_key(m), -m.capability))
            return self._selection(ctx, ranked, "static_cheapest")
        want = TIER_INDEX[ctx.classification.tier]
        # Cheapest model of the wanted tier; else the weakest stronger one; else the strongest weaker one.
        ranked = sorted(
            candidates,
            key=lambda m: (
                0 if TIER_INDEX[m.tier] == want else (1 if TIER_INDEX[m.tier] > want else 2),
                abs(TIER_INDEX[m.tier] - want),
                price_key(m),
            ),
        )
        return self._selection(ctx, ranked, "static_tier")

    def _selection(self, ctx: SelectionContext, ranked: list[ModelSpec], method: str) -> Selection:
        return Selection(
            model=ranked[0].name,
            method=method,
            context=self.context_of(ctx.classification),
            candidates=[m.name for m in ctx.candidates],
            ranked=[m.name for m in ranked],
            propensity=1.0,
            cost_weight=ctx.cost_weight,
        )
