"""OpenAI wire types as msgspec Structs, taken directly as Litestar ``data:``.

Ranges follow OpenAI's API reference, so a bad value is a 400 before any layer runs. Every
parameter a provider may accept is declared, so it passes through to the upstream unchanged;
``UNSET`` marks what the client did not send (and is never forwarded).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]
TokenCount = Annotated[int, Meta(ge=1)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Role
    content: str | list[dict[str, Any]] | UnsetType | None = UNSET
    name: str | UnsetType = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    function_call: dict[str, Any] | UnsetType = UNSET
    refusal: str | UnsetType | None = UNSET
    reasoning_content: str | UnsetType | None = UNSET
    audio: dict[str, Any] | UnsetType | None = UNSET


class CompassOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``extra_body={"compass": {...}}``: per-request routing controls."""

    cost_weight: Annotated[float, Meta(ge=0.0, le=100.0)] | UnsetType = UNSET
    cache: Literal["default", "no-store", "no-cache", "refresh"] | UnsetType = UNSET
    candidates: list[str] | UnsetType = UNSET


class ChatCompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | UnsetType | None = UNSET
    stream: bool | UnsetType | None = UNSET
    stream_options: dict[str, Any] | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    n: ChoiceCount | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    max_tokens: TokenCount | UnsetType | None = UNSET
    max_completion_tokens: TokenCount | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: dict[str, float] | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: TopLogprobs | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType | None = UNSET
    tool_choice: str | dict[str, Any] | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    functions: list[dict[str, Any]] | UnsetType | None = UNSET
    function_call: str | dict[str, Any] | UnsetType | None = UNSET
    response_format: dict[str, Any] | UnsetType | None = UNSET
    reasoning_effort: str | UnsetType | None = UNSET
    modalities: list[str] | UnsetType | None = UNSET
    audio: dict[str, Any] | UnsetType | None = UNSET
    prediction: dict[str, Any] | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    verbosity: str | UnsetType | None = UNSET
    web_search_options: dict[str, Any] | UnsetType | None = UNSET
    prompt_cache_key: str | UnsetType | None = UNSET
    safety_identifier: str | UnsetType | None = UNSET
    compass: CompassOptions | UnsetType = UNSET

    def __post_init__(self) -> None:
        """Checks the declared types cannot express; msgspec turns the ValueError into a 400."""
        for index, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if not isinstance(kind, str):
                raise ValueError(f"tools[{index}].type is required")
            function = tool.get(kind) if kind in ("function", "custom") else None
            if kind in ("function", "custom") and not (
                isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]
            ):
                raise ValueError(f"tools[{index}].{kind}.name is required")
        for index, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for part in message.content:
                    if not isinstance(part.get("type"), str):
                        raise ValueError(f"messages[{index}].content parts need a 'type'")
                    if part["type"] == "text" and not isinstance(part.get("text"), str):
                        raise ValueError(f"messages[{index}].content text parts need a string 'text'")

    @property
    def wants_stream(self) -> bool:
        return bool(self.stream) if self.stream is not UNSET else False

    @property
    def include_usage(self) -> bool:
        options = self.stream_options
        return isinstance(options, dict) and bool(options.get("include_usage"))


# Fields that are routing controls, not provider parameters.
_NOT_FORWARDED = frozenset({"messages", "model", "stream", "stream_options", "compass"})


def upstream_params(request: ChatCompletionRequest) -> dict[str, Any]:
    """The provider parameters the client actually sent (UNSET and None dropped)."""
    params = {}
    for field in request.__struct_fields__:
        if field in _NOT_FORWARDED:
            continue
        value = getattr(request, field)
        if value is UNSET or value is None:
            continue
        params[field] = value
    return params


def messages_as_dicts(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for LiteLLM and for storage (UNSET fields omitted)."""
    return msgspec.to_builtins(request.messages)


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return message_text(messages[-1].get("content")) if messages else ""


class FeedbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /feedback``: a score in [0, 1] or thumbs up/down for one chat completion id."""

    id: Annotated[str, Meta(min_length=1, max_length=200)]
    score: float | UnsetType = UNSET
    thumbs: Literal["up", "down"] | UnsetType = UNSET
    comment: Annotated[str, Meta(max_length=4000)] | UnsetType = UNSET


class ClassificationRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/classifications`` and ``/predict``: Hugging Face inference style input."""

    inputs: (
        Annotated[str, Meta(min_length=1)]
        | Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1, max_length=256)]
    )
