"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic Messages API, routed.

Translated onto the chat pipeline (``compass.pipeline.anthropic``); errors on these paths are
mapped to Anthropic's shape once, in ``http/app.py``. ``x-api-key`` is a client key (``http/auth.py``).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import ServerSentEvent

from compass.http.auth import caller_for, rated_caller
from compass.http.routes import cache_mode, check_limits, json_response
from compass.http.sse import framed
from compass.pipeline import anthropic
from compass.pipeline.chat import complete, open_stream
from compass.services import Services
from compass.wire.anthropic import CountTokensRequest, MessagesRequest


@post("/v1/messages", status_code=200, summary="Create a message (Anthropic Messages API, routed)")
async def create_message(
    request: Request, data: MessagesRequest, services: Services
) -> Response | ServerSentEvent:
    """Anthropic's Messages API; a ``claude-*`` name the pool lacks, or ``auto``, is routed."""
    caller = await rated_caller(request, services)
    chat = anthropic.to_chat(data, services.pool)
    check_limits(services, chat)
    caller.cache_mode = cache_mode(request, chat)
    message_id = anthropic.new_message_id()
    if data.wants_stream:
        chunks, headers = await open_stream(services, chat, caller, message_id)
        return ServerSentEvent(framed(anthropic.to_events(chunks, data), sep="\n"), headers=headers)
    body, headers = await complete(services, chat, caller, message_id)
    return json_response(anthropic.to_message(body, data), headers)


@post("/v1/messages/count_tokens", status_code=200, summary="Count a message's input tokens")
async def count_message_tokens(request: Request, data: CountTokensRequest, services: Services) -> Response:
    """LiteLLM's token counter (tiktoken's encodings) for the named pool model, else a ~4 chars estimate."""
    caller_for(request, services)
    spec = services.pool.get(data.model) if data.model in services.pool else None
    model = spec.litellm_model if spec is not None else None
    tokens, counter = anthropic.count_tokens(data, model)
    body: dict[str, Any] = {"input_tokens": tokens}
    return json_response(body, {"x-compass-token-counter": counter})


MESSAGES_HANDLERS = [create_message, count_message_tokens]
