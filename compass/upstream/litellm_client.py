"""The provider call: ``Upstream.complete`` / ``Upstream.stream`` over LiteLLM.

LiteLLM is imported lazily and configured once for a gateway's needs (no telemetry, no callbacks,
no per-call logging, local cost map). Provider errors become ``UpstreamError`` (502),
``UpstreamTimeout`` (504) or, when the provider rejected the request itself, ``InvalidRequest``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from compass.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from compass.upstream.base import Upstream
from compass.upstream.litellm_setup import configured_litellm
from layers.types import ModelSpec


def map_litellm_error(exc: Exception, model: ModelSpec) -> Exception:
    """A LiteLLM exception as one of ours; the provider's message is kept."""
    import litellm

    message = getattr(exc, "message", None) or str(exc)
    where = f"model {model.name!r} ({model.litellm_model})"
    if isinstance(exc, litellm.Timeout):
        return UpstreamTimeout(f"{where} timed out after {model.timeout_s:g}s: {message}")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)) and not isinstance(
        exc, litellm.ContextWindowExceededError
    ):
        return InvalidRequest(f"{where} rejected the request: {message}", code="upstream_bad_request")
    if isinstance(exc, litellm.ContextWindowExceededError):
        return InvalidRequest(f"{where}: {message}", code="context_length_exceeded")
    error = UpstreamError(f"{where} failed: {message}")
    error.upstream_status = status  # type: ignore[attr-defined]
    return error


class LiteLLMUpstream(Upstream):
    """LiteLLM for every provider; self-hosted OpenAI-compatible servers take ``compass.upstream.direct``."""

    name = "litellm"

    def __init__(self, direct: bool = True, **_: Any) -> None:
        self._litellm: Any = None
        self.direct_enabled = direct
        self._routes: dict[str, Any] = {}
        self._direct: Any = None

    def _route(self, model: ModelSpec) -> Any:
        """The direct route for ``model``, resolved once per model; ``None`` means LiteLLM."""
        if not self.direct_enabled:
            return None
        if model.name not in self._routes:
            from compass.upstream.direct import DirectClient, direct_route

            self._routes[model.name] = direct_route(model, self._key(model))
            if self._routes[model.name] is not None and self._direct is None:
                self._direct = DirectClient()
        return self._routes[model.name]

    @staticmethod
    def _key(model: ModelSpec) -> str | None:
        return model.api_key or (os.environ.get(model.api_key_env) if model.api_key_env else None)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
            self._direct = None

    def _lib(self) -> Any:
        if self._litellm is None:
            self._litellm = configured_litellm()
        return self._litellm

    async def start(self, models: list[ModelSpec] | None = None) -> None:
        """Resolve each model's route; import LiteLLM (~170 MiB, seconds) only if one needs it.

        A pool served wholly by the direct path (the demo, vLLM, Ollama) never loads LiteLLM,
        which keeps a worker's memory down; without the pool, LiteLLM is loaded to be ready.
        """
        if models is None or any(self._route(model) is None for model in models):
            self._lib()

    def _kwargs(self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict:
        kwargs: dict[str, Any] = {
            "model": model.litellm_model,
            "messages": messages,
            "timeout": model.timeout_s,
            "num_retries": 0,  # retries and fallbacks are the gateway's job
            **params,
        }
        if model.api_base:
            kwargs["api_base"] = model.api_base
        key = self._key(model)
        if key:
            kwargs["api_key"] = key
        return kwargs

    async def complete(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        route = self._route(model)
        if route is not None:
            return await self._direct.complete(model, route, messages, params)
        litellm = self._lib()
        try:
            response = await litellm.acompletion(**self._kwargs(model, messages, params))
        except Exception as exc:  # every provider failure is mapped, none escapes as a 500
            raise map_litellm_error(exc, model) from exc
        return response.model_dump(exclude_none=True)

    async def stream(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        route = self._route(model)
        if route is not None:
            async for chunk in self._direct.stream(model, route, messages, params):
                yield chunk
            return
        litellm = self._lib()
        kwargs = self._kwargs(model, messages, params)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        try:
            response = await litellm.acompletion(**kwargs)
            async for chunk in response:
                yield chunk.model_dump(exclude_none=True)
        except Exception as exc:
            raise map_litellm_error(exc, model) from exc

    async def embed(self, model: ModelSpec, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
        """``litellm.aembedding``; float vectors (the gateway encodes base64 itself)."""
        litellm = self._lib()
        kwargs: dict[str, Any] = {
            "model": model.litellm_model,
            "input": inputs,
            "timeout": model.timeout_s,
            "num_retries": 0,
            **params,
        }
        if model.api_base:
            kwargs["api_base"] = model.api_base
        key = self._key(model)
        if key:
            kwargs["api_key"] = key
        try:
            response = await litellm.aembedding(**kwargs)
        except Exception as exc:
            raise map_litellm_error(exc, model) from exc
        return response.model_dump(exclude_none=True)


def litellm_cost(litellm_model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """LiteLLM's cost map, for pool models configured without prices."""
    try:
        import litellm

        prompt_cost, completion_cost = litellm.cost_per_token(
            model=litellm_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
        return float(prompt_cost + completion_cost)
    except Exception:
        return 0.0
