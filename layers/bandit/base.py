"""The Layer 2 interface: ``Selector.select(context) -> Selection`` and ``observe(reward)``.

Selectors are event-sourced: their state must be a pure fold over ``RewardEvent`` rows, so the
gateway can rebuild it at start-up from DuckDB (``rebuild``) and get exactly the live state back.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec

from layers.classifier.base import Classification
from layers.registry import resolve
from layers.types import ModelSpec

# Per-request cost weights behind the virtual models compass/cheap, compass/balanced, compass/best.
COST_WEIGHT_PRESETS: dict[str, float] = {"cheap": 1.0, "balanced": 0.3, "best": 0.0}


class SelectionContext(msgspec.Struct, kw_only=True):
    """Everything a selector may look at for one request."""

    classification: Classification
    candidates: list[ModelSpec]
    prompt_tokens: int
    expected_completion_tokens: int = 256
    cost_weight: float | None = None  # None: the selector's configured default
    # The prompt's MiniLM vector when Layer 1 or the cache computed it (per-prompt selectors read it).
    embedding: Any = None


class Selection(msgspec.Struct, kw_only=True):
    """The decision, with what is needed to evaluate other policies on the logs later."""

    model: str
    method: str
    context: str
    candidates: list[str]
    ranked: list[str] = []  # best first; the gateway falls back along this order
    utilities: dict[str, float] = {}
    sampled: dict[str, float] = {}
    propensity: float | None = None  # P(choosing `model`) under the policy, for IPS
    cost_weight: float | None = None


class RewardEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One observation of a model's answer quality in a context, reward in [0, 1]."""

    request_id: str
    context: str
    model: str
    reward: float
    ts: float  # unix seconds
    source: str = "feedback"  # feedback | failure | offline
    embedding: Any = None  # the request's vector (float32 bytes or array), for per-prompt selectors


class Selector(abc.ABC):
    name: ClassVar[str] = "abstract"
    uses_embedding: ClassVar[bool] = False  # reads SelectionContext.embedding / RewardEvent.embedding

    @abc.abstractmethod
    def select(self, ctx: SelectionContext) -> Selection:
        """Pick one candidate. Must be cheap (well under a millisecond for 40 models)."""

    def observe(self, event: RewardEvent) -> None:  # noqa: B027 - static selectors learn nothing
        """Fold one reward into the state."""

    def forget(self, event: RewardEvent) -> None:  # noqa: B027
        """Undo a previously observed event (feedback replaced by a newer one)."""

    def rebuild(self, events: Iterable[RewardEvent]) -> None:
        """Reset to the prior and fold ``events`` in order."""
        self.reset()
        for event in events:
            self.observe(event)

    def reset(self) -> None:  # noqa: B027
        """Return to the prior."""

    def context_of(self, classification: Classification) -> str:
        """The context key rewards are filed under for this classification."""
        return classification.tier

    def snapshot(self) -> dict[str, Any]:
        """The posteriors (or whatever the state is) for ``/admin/api/bandit``."""
        return {"selector": self.name, "contexts": {}}


SELECTOR_CLS: dict[str, str] = {
    "static": "layers.bandit.static:StaticTierSelector",
    "thompson": "layers.bandit.thompson:ThompsonSelector",
    "neighbourhood": "layers.bandit.neighbourhood:NeighbourhoodSelector",
}


def build_selector(name: str, options: dict[str, Any], pool: list[ModelSpec]) -> Selector:
    cls = resolve(SELECTOR_CLS, name, "selector")
    return cls(options, pool)
