"""Anthropic's Messages API on the wire: requests as msgspec Structs, errors in Anthropic's shape.

Content blocks stay plain dicts here and are checked when they are translated
(``compass.pipeline.anthropic``), so an unknown block type is a clear 400 naming its index
rather than a decode error. Fields the gateway does not use (``thinking``, ``service_tier``, …)
are accepted and ignored, as other Anthropic-compatible servers do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from compass.wire.chat import CompassOptions


class AnthropicMessage(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/messages``; ``max_tokens`` is required, as Anthropic requires it."""

    model: str
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | UnsetType = UNSET
    top_k: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    stream: bool = False
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: dict[str, Any] | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    compass: CompassOptions | UnsetType = UNSET


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/messages/count_tokens``: the same input, no ``max_tokens``."""

    model: str
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: dict[str, Any] | UnsetType = UNSET


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error_body(status: int, openai_body: dict[str, Any]) -> dict[str, Any]:
    """The gateway's OpenAI-shaped error as ``{"type": "error", "error": {"type", "message"}}``."""
    error = openai_body.get("error") if isinstance(openai_body.get("error"), dict) else {}
    message = str(error.get("message") or "error")
    kind = ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
