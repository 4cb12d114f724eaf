"""OpenAI's Responses API request (``POST /v1/responses``) as a msgspec Struct.

Input items stay plain dicts here: ``compass.pipeline.responses`` checks and translates them
onto chat messages, with a 400 that names the item for anything it cannot take.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from compass.wire.chat import CompassOptions, Temperature, TokenCount, TopLogprobs, TopP


class ResponsesRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    input: Annotated[str, Meta(min_length=1)] | Annotated[list[dict[str, Any]], Meta(min_length=1)]
    model: str | UnsetType | None = UNSET
    instructions: str | UnsetType | None = UNSET
    previous_response_id: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType | None = UNSET
    tools: list[dict[str, Any]] | UnsetType | None = UNSET
    tool_choice: str | dict[str, Any] | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    text: dict[str, Any] | UnsetType | None = UNSET
    reasoning: dict[str, Any] | UnsetType | None = UNSET
    max_output_tokens: TokenCount | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    top_logprobs: TopLogprobs | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    stream: bool | UnsetType | None = UNSET
    stream_options: dict[str, Any] | UnsetType | None = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    user: str | UnsetType | None = UNSET
    safety_identifier: str | UnsetType | None = UNSET
    prompt_cache_key: str | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    truncation: str | UnsetType | None = UNSET
    include: list[str] | UnsetType | None = UNSET
    background: bool | UnsetType | None = UNSET
    compass: CompassOptions | UnsetType = UNSET

    @property
    def wants_stream(self) -> bool:
        return bool(self.stream) if self.stream is not UNSET else False

    @property
    def wants_store(self) -> bool:
        """OpenAI stores responses unless told ``store: false``."""
        return self.store is UNSET or self.store is None or bool(self.store)
