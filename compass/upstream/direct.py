"""A direct path to OpenAI-compatible servers (vLLM, Ollama, llama.cpp, the fake upstream).

Measured here (BENCHMARKS.md, "LiteLLM per-call cost"): ``litellm.acompletion`` costs ~4 ms of
CPU per call against a loopback server, the raw ``openai`` SDK ~1.2 ms, a bare aiohttp POST
~0.7 ms. Most of LiteLLM's share is response-cost bookkeeping and success logging we do not
use. For a server that already speaks OpenAI's wire format there is nothing to translate, so
these models skip that work: LiteLLM still resolves the model string (``get_llm_provider``) and
still serves every hosted provider (OpenAI, Anthropic, Gemini, DashScope...), where its
parameter mapping earns its cost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from compass.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from layers.types import ModelSpec

# LiteLLM providers whose endpoint is a plain OpenAI-compatible server when an api_base is set.
DIRECT_PROVIDERS = frozenset({"openai", "hosted_vllm", "custom_openai", "openai_like"})

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


class DirectRoute(msgspec.Struct, frozen=True):
    url: str
    model: str
    headers: dict[str, str]


def direct_route(model: ModelSpec, api_key: str | None) -> DirectRoute | None:
    """A direct route for ``model`` if LiteLLM resolves it to a self-hosted OpenAI-compatible server."""
    if not model.api_base:
        return None
    prefix, _, rest = model.litellm_model.partition("/")
    if prefix in DIRECT_PROVIDERS and rest:
        upstream_model, provider = rest, prefix  # what LiteLLM resolves it to, without loading it
    else:
        from compass.upstream.litellm_setup import configured_litellm

        try:
            upstream_model, provider, _, _ = configured_litellm().get_llm_provider(
                model.litellm_model, api_base=model.api_base
            )
        except Exception:
            return None
    if provider not in DIRECT_PROVIDERS or "api.openai.com" in model.api_base:
        return None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return DirectRoute(
        url=model.api_base.rstrip("/") + "/chat/completions", model=upstream_model, headers=headers
    )


def _error_for(status: int, text: str, model: ModelSpec) -> Exception:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:500] or f"HTTP {status}"
    where = f"model {model.name!r} ({model.litellm_model})"
    if status in (400, 422):
        return InvalidRequest(f"{where} rejected the request: {message}", code="upstream_bad_request")
    error = UpstreamError(f"{where} failed with HTTP {status}: {message}")
    error.upstream_status = status  # type: ignore[attr-defined]
    return error


class DirectClient:
    """One pooled aiohttp session for every direct route."""

    def __init__(self, max_connections: int = 1000) -> None:
        self.max_connections = max_connections
        self._session: Any = None

    def _session_or_new(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _payload(
        self, route: DirectRoute, messages: list[dict[str, Any]], params: dict[str, Any], stream: bool
    ):
        body = {"model": route.model, "messages": messages, **params}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return _ENCODER.encode(body)

    async def complete(
        self, model: ModelSpec, route: DirectRoute, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        import aiohttp

        session = self._session_or_new()
        timeout = aiohttp.ClientTimeout(total=model.timeout_s)
        try:
            async with session.post(
                route.url,
                data=self._payload(route, messages, params, False),
                headers=route.headers,
                timeout=timeout,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _error_for(response.status, raw.decode(errors="replace"), model)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"model {model.name!r} timed out after {model.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"model {model.name!r} could not be reached: {exc}") from exc
        try:
            body = _DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"model {model.name!r} returned a body that is not JSON") from exc
        if not isinstance(body, dict) or "choices" not in body:
            raise UpstreamError(f"model {model.name!r} returned no choices")
        return body

    async def stream(
        self, model: ModelSpec, route: DirectRoute, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        import aiohttp

        session = self._session_or_new()
        # The whole-request timeout would cut long streams; bound the connect and each read instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=model.timeout_s, sock_read=model.timeout_s)
        try:
            async with session.post(
                route.url,
                data=self._payload(route, messages, params, True),
                headers=route.headers,
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise _error_for(response.status, (await response.read()).decode(errors="replace"), model)
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    if not data:
                        continue
                    chunk = _DECODER.decode(data)
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        message = (chunk.get("error") or {}).get("message", "stream error")
                        raise UpstreamError(f"model {model.name!r} failed mid-stream: {message}")
                    yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(f"model {model.name!r} timed out after {model.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"model {model.name!r} stream broke: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"model {model.name!r} sent a chunk that is not JSON") from exc
