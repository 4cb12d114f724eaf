"""The provider-call interface: ``Upstream.complete`` / ``Upstream.stream``, and its registry.

Implementations: ``litellm`` (every provider through LiteLLM, with the direct aiohttp path for
OpenAI-compatible servers) and ``mock`` (in-process, for unit tests). A new provider client
subclasses ``Upstream`` and adds one line to ``UPSTREAM_CLS``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from layers.registry import resolve
from layers.types import ModelSpec


class Upstream(abc.ABC):
    name: ClassVar[str] = "abstract"

    async def start(self, models: list[ModelSpec] | None = None) -> None:  # noqa: B027
        """Warm up clients for the pool's ``models``."""

    async def close(self) -> None:  # noqa: B027
        """Close connection pools."""

    @abc.abstractmethod
    async def complete(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        """A ``chat.completion`` body as a plain dict."""

    @abc.abstractmethod
    def stream(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts; the last one carries usage when the provider sends it."""

    async def embed(self, model: ModelSpec, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI ``embeddings`` list body (float vectors) for a ``mode: embedding`` model."""
        from compass.errors import InvalidRequest

        raise InvalidRequest(f"the {self.name} upstream cannot compute embeddings", param="model")


UPSTREAM_CLS: dict[str, str] = {
    "litellm": "compass.upstream.litellm_client:LiteLLMUpstream",
    "mock": "compass.upstream.mock:MockUpstream",
}


def build_upstream(name: str, **options: Any) -> Upstream:
    return resolve(UPSTREAM_CLS, name, "upstream backend")(**options)
