"""Checks every generating endpoint makes on its (chat-translated) request: limits, cache mode."""

from __future__ import annotations

import msgspec
from litestar import Request

from compass.errors import InvalidRequest
from compass.pipeline.exchange import CACHE_MODES
from compass.services import Services
from compass.wire.chat import ChatCompletionRequest


def cache_mode(request: Request, data: ChatCompletionRequest) -> str:
    mode = request.headers.get("x-compass-cache")
    options = data.compass
    if mode is None and options is not msgspec.UNSET and options.cache is not msgspec.UNSET:
        mode = options.cache
    mode = (mode or "default").strip().lower()
    if mode not in CACHE_MODES:
        raise InvalidRequest(
            f"x-compass-cache must be one of {', '.join(CACHE_MODES)}", param="x-compass-cache"
        )
    return mode


def check_limits(services: Services, data: ChatCompletionRequest) -> None:
    limits = services.settings.limits
    if len(data.messages) > limits.max_messages:
        raise InvalidRequest(
            f"too many messages: {len(data.messages)} > {limits.max_messages}", param="messages"
        )
    ceiling = limits.max_tokens_ceiling
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(data, name)
        if ceiling is not None and isinstance(value, int) and value > ceiling:
            raise InvalidRequest(f"{name} {value} exceeds this gateway's ceiling of {ceiling}", param=name)
