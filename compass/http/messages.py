"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API, routed.

The anthropic SDK (and Claude Code, or anything built on it) works with ``base_url`` pointed at
the gateway and its key in ``x-api-key``. Errors on these paths take Anthropic's shape
(``compass.http.app`` maps them once, by path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import ServerSentEvent, ServerSentEventMessage

from compass.http.auth import caller_for
from compass.http.routes import cache_mode, check_limits, json_response
from compass.pipeline.affinity import SESSION_HEADER
from compass.pipeline.anthropic import anthropic_events, to_chat_request, to_message
from compass.pipeline.chat import complete, open_stream
from compass.pipeline.routing import approx_tokens
from compass.services import Services
from compass.wire.anthropic import CountTokensRequest, MessagesRequest

_JSON = msgspec.json.Encoder()


async def _sse(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[ServerSentEventMessage]:
    async for name, data in events:
        yield ServerSentEventMessage(event=name, data=_JSON.encode(data).decode())


@post("/v1/messages", status_code=200, summary="Create a message (Anthropic Messages API, routed)")
async def create_message(
    request: Request, data: MessagesRequest, services: Services
) -> Response | ServerSentEvent:
    caller = caller_for(request, services, rate_limited=True)
    chat = to_chat_request(data)
    check_limits(services, chat)
    caller.cache_mode = cache_mode(request, chat)
    caller.session = request.headers.get(SESSION_HEADER) or None
    if data.stream:
        events, headers = await open_stream(services, chat, caller)
        return ServerSentEvent(_sse(anthropic_events(events)), headers=headers)
    body, headers = await complete(services, chat, caller)
    return json_response(to_message(body, data.model), headers)


@post("/v1/messages/count_tokens", status_code=200, summary="Count a message's input tokens")
async def count_tokens(request: Request, data: CountTokensRequest, services: Services) -> dict[str, Any]:
    """The gateway's own estimate (~4 characters a token), the same one its routing uses."""
    caller_for(request, services)
    full = MessagesRequest(
        model=data.model, max_tokens=1, messages=data.messages, system=data.system, tools=data.tools
    )
    chat = to_chat_request(full)
    tokens = approx_tokens(msgspec.to_builtins(chat.messages))
    if chat.tools:
        tokens += len(_JSON.encode(chat.tools)) // 4
    return {"input_tokens": tokens}


MESSAGES_HANDLERS = [create_message, count_tokens]
