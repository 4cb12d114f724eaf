"""Types shared by the layers and the gateway: tiers, model specs and the prompt under routing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    import numpy as np

Tier = Literal["simple", "medium", "complex"]
TIERS: tuple[Tier, ...] = ("simple", "medium", "complex")
TIER_INDEX: dict[str, int] = {t: i for i, t in enumerate(TIERS)}


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One model of the pool, as the router and the upstream caller see it."""

    name: str
    litellm_model: str
    api_base: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    tier: Tier = "medium"
    rank: float | None = None
    context_window: int = 128_000
    timeout_s: float = 0.0  # seconds per upstream call; 0: the gateway's upstream.timeout_s
    demo: bool = False
    mode: Literal["chat", "embedding"] = "chat"  # embedding models serve /v1/embeddings, never chat

    @property
    def capability(self) -> float:
        """Ordering used for 'at least as capable': explicit rank, else the tier's index."""
        return self.rank if self.rank is not None else float(TIER_INDEX[self.tier])

    def expected_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call of that size at this model's list prices."""
        return (
            prompt_tokens * self.input_price_per_mtok + completion_tokens * self.output_price_per_mtok
        ) / 1e6


EmbedFn = Callable[[list[str]], Awaitable["np.ndarray"]]


class EmbedderBusy(Exception):
    """The embedder's backlog is full: callers degrade (Layer 1 fallback, cache miss, no store).

    Refusing new work at a bounded queue is what keeps memory and latency flat when requests
    arrive faster than the embedder can encode them; waiting would only grow the backlog.
    """


class Prompt:
    """The request text under routing, with its embedding computed at most once.

    Layer 1 (the MiniLM classifier) and Layer 3 (the semantic cache) both need the embedding of
    the last user turn; whichever asks first starts it, the other reuses it. The computation is a
    task of its own, shielded from its waiters: when Layer 1 runs out of its time budget, the
    embedding goes on and the cache uses it instead of queueing the same text a second time.
    """

    __slots__ = ("_embed", "_embedding", "_task", "approx_tokens", "text")

    def __init__(self, text: str, approx_tokens: int, embed: EmbedFn | None = None) -> None:
        self.text = text
        self.approx_tokens = approx_tokens
        self._embed = embed
        self._embedding: np.ndarray | None = None
        self._task: asyncio.Task[np.ndarray] | None = None

    @property
    def has_embedder(self) -> bool:
        return self._embed is not None

    async def embedding(self) -> np.ndarray:
        """The L2-normalised float32 embedding of ``text`` (shape ``(dim,)``)."""
        if self._embedding is not None:
            return self._embedding
        if self._embed is None:
            raise RuntimeError("no embedder configured for this prompt")
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            self._task = asyncio.ensure_future(self._compute())
            self._task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(self._task)

    async def _compute(self) -> np.ndarray:
        assert self._embed is not None
        vector = (await self._embed([self.text]))[0]
        self._embedding = vector
        return vector

    @property
    def ready_embedding(self) -> np.ndarray | None:
        """The embedding if already computed, without waiting or starting one."""
        return self._embedding

    def set_embedding(self, vector: np.ndarray) -> None:
        self._embedding = vector


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """A failed embedding nobody waits for any more must not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
