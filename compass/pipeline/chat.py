"""One chat request end to end, streaming or not: route → cache → upstream call → record.

The ``Exchange`` (``compass.pipeline.exchange``) carries the request's state and becomes its
history row; this module drives it: a non-streaming answer, or a stream opened (with retries and
fallback along Layer 2's ranking) before the first byte is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from compass.errors import CompassError, InvalidRequest, UpstreamError
from compass.pipeline.exchange import RETRY_BACKOFF_S, Caller, Exchange
from compass.pipeline.streaming import cached_stream, upstream_stream
from compass.services import Services
from compass.wire.chat import ChatCompletionRequest


async def complete(
    services: Services, request: ChatCompletionRequest, caller: Caller, request_id: str | None = None
) -> tuple[dict, dict]:
    """A non-streaming chat completion: ``(body, headers)``; every outcome is recorded."""
    exchange = Exchange(services, request, caller, request_id)
    try:
        cached = await exchange.route_and_lookup()
        if cached is not None:
            body = exchange.finish_body(cached)
        else:
            body = exchange.finish_body(await exchange.call())
            exchange.start_cache_store(body)
    except CompassError as exc:
        exchange.fail(exc)
        if exchange.decision is not None:
            exchange.record()
        raise
    except Exception as exc:
        exchange.fail(exc)
        exchange.record()
        raise
    body["routing"] = exchange.routing()  # final attempts and cache status
    committed = exchange.record()
    if committed is not None:
        await committed
    return body, exchange.headers()


async def open_stream(
    services: Services, request: ChatCompletionRequest, caller: Caller, request_id: str | None = None
) -> tuple[AsyncIterator[str], dict[str, str]]:
    """Route, look up the cache and open the upstream stream before any byte is sent.

    Failures before the first token fall back to the next model (or raise, so the client gets
    a proper 4xx/5xx); failures after it end the stream with an OpenAI-style error event.
    """
    exchange = Exchange(services, request, caller, request_id)
    try:
        cached = await exchange.route_and_lookup()
        if cached is not None:
            return cached_stream(exchange, cached), exchange.headers()
        chunks, first = await exchange_open_upstream(exchange)
    except CompassError as exc:
        exchange.fail(exc)
        if exchange.decision is not None:
            exchange.record()
        raise
    return upstream_stream(exchange, chunks, first), exchange.headers()


async def exchange_open_upstream(exchange: Exchange) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
    """Open a stream on the first model that yields a first chunk, with retries and fallback."""
    retries = exchange.services.settings.upstream.max_retries
    last: CompassError | None = None
    for model in exchange.plan():
        for attempt in range(retries + 1):
            if not exchange.may_try(model, attempt):
                break
            start = time.perf_counter()
            chunks = exchange.services.upstream.stream(model, exchange.messages, exchange.params)
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                last = UpstreamError(f"model {model.name!r} returned an empty stream")
                self_error: Exception = last
            except InvalidRequest as exc:
                exchange.note_attempt(model, start, exc)
                raise
            except UpstreamError as exc:
                last = self_error = exc
            else:
                exchange.note_attempt(model, start, None)
                exchange.model = model
                exchange.upstream_started = start  # type: ignore[attr-defined]
                return chunks, first
            exchange.note_attempt(model, start, self_error)
            if attempt < retries:
                await asyncio.sleep(RETRY_BACKOFF_S * (2**attempt))
        exchange.model_failed(model)
    assert last is not None
    raise last
