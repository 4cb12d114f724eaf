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
        want = TIER_INDEX[ctx.classification.tier]
        candidates = ctx.candidates
        # Cheapest model of the wanted tier; else the weakest stronger one; else the strongest weaker one.
        ranked = sorted(
            candidates,
            key=lambda m: (
                0 if TIER_INDEX[m.tier] == want else (1 if TIER_INDEX[m.tier] > want else 2),
                abs(TIER_INDEX[m.tier] - want),
                price_key(m),
            ),
        )
        return Selection(
            model=ranked[0].name,
            method="static_tier",
            context=self.context_of(ctx.classification),
            candidates=[m.name for m in candidates],
            ranked=[m.name for m in ranked],
            propensity=1.0,
        )
