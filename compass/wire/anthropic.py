"""Anthropic Messages wire types (``POST /v1/messages``) as msgspec Structs, and its error shape.

Shapes follow anthropic-sdk-python's ``types/`` (``MessageCreateParams``, ``Message``,
``RawMessageStreamEvent``). Ranges follow Anthropic's reference, so a bad value is a 400 before
any layer runs. Content blocks stay dicts: the translation to chat checks each block's type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from compass.wire.chat import CompassOptions

Temperature = Annotated[float, Meta(ge=0.0, le=1.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]


class AnthropicMessage(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


def check_blocks(messages: list[AnthropicMessage], tools: Any, choice: Any) -> None:
    """Checks the declared types cannot express; msgspec turns the ValueError into a 400."""
    for index, message in enumerate(messages):
        if isinstance(message.content, list):
            for block in message.content:
                if not isinstance(block.get("type"), str):
                    raise ValueError(f"messages[{index}].content blocks need a 'type'")
    for index, tool in enumerate(tools or []):
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ValueError(f"tools[{index}].name is required")
    if choice is not UNSET:
        if choice.get("type") not in ("auto", "any", "tool", "none"):
            raise ValueError("tool_choice.type must be one of auto, any, tool, none")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise ValueError("tool_choice.name is required when tool_choice.type is 'tool'")


class MessagesRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``client.messages.create(...)``; ``max_tokens`` and ``model`` are required, as in Anthropic's API."""

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    temperature: Temperature | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: dict[str, Any] | UnsetType = UNSET
    thinking: dict[str, Any] | UnsetType = UNSET
    service_tier: str | UnsetType = UNSET
    container: str | dict[str, Any] | UnsetType | None = UNSET
    mcp_servers: list[dict[str, Any]] | UnsetType = UNSET
    output_config: dict[str, Any] | UnsetType = UNSET
    cache_control: dict[str, Any] | UnsetType | None = UNSET
    compass: CompassOptions | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_blocks(self.messages, self.tools, self.tool_choice)
        fmt = self.output_config.get("format") if self.output_config is not UNSET else None
        if fmt is not None and not (isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict)):
            raise ValueError("output_config.format needs a 'schema' object")

    @property
    def wants_stream(self) -> bool:
        return bool(self.stream) if self.stream is not UNSET else False


class CountTokensRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``client.messages.count_tokens(...)``: the request without ``max_tokens``."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: dict[str, Any] | UnsetType = UNSET
    thinking: dict[str, Any] | UnsetType = UNSET
    mcp_servers: list[dict[str, Any]] | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_blocks(self.messages, self.tools, self.tool_choice)


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_PATH_PREFIX = "/v1/messages"


def anthropic_status(status: int) -> int:
    """Anthropic says overloaded with a 529; every other status is kept."""
    return 529 if status == 503 else status


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def from_openai_error(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An OpenAI-shaped ``{"error": {...}}`` body as Anthropic's ``{"type": "error", ...}``."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(error.get("message") or "error")
    param = error.get("param")
    if param and param not in message:
        message = f"{param}: {message}"
    status = anthropic_status(status)
    return status, anthropic_error(status, message)
