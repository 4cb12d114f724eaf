"""Layer 2: choose a model from the pool for a classified prompt, and learn from rewards."""

from layers.bandit.base import (
    SELECTOR_CLS,
    RewardEvent,
    Selection,
    SelectionContext,
    Selector,
    build_selector,
)

__all__ = ["SELECTOR_CLS", "RewardEvent", "Selection", "SelectionContext", "Selector", "build_selector"]
