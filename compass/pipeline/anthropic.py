"""Anthropic Messages onto the chat pipeline, and its answers back into Anthropic's shapes.

A ``/v1/messages`` request becomes a ``ChatCompletionRequest`` and runs through the same
``Exchange`` as chat (routing, cache, history, stats, metrics, feedback), so every pool model
answers, whatever its provider, and the upstream needs to speak only chat completions. The
message id is the chat request id with Anthropic's prefix (``msg_<hex>`` for ``chatcmpl-<hex>``),
so ``POST /feedback`` takes either.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from compass.errors import InvalidRequest
from compass.wire.anthropic import MessagesRequest
from compass.wire.chat import ChatCompletionRequest

MESSAGE_PREFIX = "msg_"
CHAT_PREFIX = "chatcmpl-"
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_DECODE = msgspec.json.Decoder()


def message_id(request_id: str) -> str:
    return MESSAGE_PREFIX + request_id.removeprefix(CHAT_PREFIX)


def request_id_of(public_id: str) -> str:
    """The chat request id behind a ``msg_`` id (any other id is returned as it is)."""
    if public_id.startswith(MESSAGE_PREFIX):
        return CHAT_PREFIX + public_id.removeprefix(MESSAGE_PREFIX)
    return public_id


def _text_of_blocks(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    parts = []
    for index, block in enumerate(blocks or []):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise InvalidRequest(f"{where}[{index}]: expected a text block", param=f"{where}[{index}]")
        parts.append(block["text"])
    return "\n".join(parts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and source.get("data"):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = source["url"]
    else:
        raise InvalidRequest(f"{where}: an image needs a base64 or url source", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return "" if content is None else json.dumps(content)


def _chat_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system is not msgspec.UNSET:
        system = _text_of_blocks(request.system, "system")
        if system:
            messages.append({"role": "system", "content": system})
    for m_index, message in enumerate(request.messages):
        where = f"messages[{m_index}].content"
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for b_index, block in enumerate(message.content):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"{where}[{b_index}]"
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and message.role == "user":
                parts.append(_image_part(block, at))
            elif kind == "tool_use" and message.role == "assistant":
                if not block.get("id") or not block.get("name"):
                    raise InvalidRequest(f"{at}: tool_use needs an id and a name", param=at)
                arguments = json.dumps(block.get("input") or {})
                calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {"name": block["name"], "arguments": arguments},
                    }
                )
            elif kind == "tool_result" and message.role == "user":
                if not block.get("tool_use_id"):
                    raise InvalidRequest(f"{at}: tool_result needs a tool_use_id", param=at)
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": _tool_result_text(block.get("content")),
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # another provider's reasoning: not something a chat upstream takes back
            else:
                raise InvalidRequest(
                    f"{at}: content block type {kind!r} is not supported in a {message.role} message",
                    param=at,
                )
        if message.role == "assistant":
            text = "\n".join(p["text"] for p in parts if p["type"] == "text")
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            messages.append(entry)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            content: Any = "\n".join(p["text"] for p in parts) if only_text else parts
            messages.append({"role": "user", "content": content})
    return messages


def _tools(request: MessagesRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools is not msgspec.UNSET:
        tools = []
        for index, tool in enumerate(request.tools):
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidRequest(f"tools[{index}].name is required", param=f"tools[{index}].name")
            function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            tools.append({"type": "function", "function": function})
        out["tools"] = tools
    choice = request.tool_choice
    if choice is not msgspec.UNSET:
        kind = choice.get("type")
        mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
        if kind == "tool" and choice.get("name"):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif mapped is not None:
            out["tool_choice"] = mapped
        else:
            raise InvalidRequest(
                f"tool_choice.type {kind!r} is not one of auto, any, tool, none", param="tool_choice"
            )
        if choice.get("disable_parallel_tool_use") and "tools" in out:
            out["parallel_tool_calls"] = False
    return out


def to_chat_request(request: MessagesRequest) -> ChatCompletionRequest:
    """The same request in chat completions' terms (validated by its Struct)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _chat_messages(request),
        "max_tokens": request.max_tokens,
        "stream": request.stream,
        **_tools(request),
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.stop_sequences is not msgspec.UNSET:
        body["stop"] = request.stop_sequences
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not msgspec.UNSET:
            body[name] = value
    if request.metadata is not msgspec.UNSET and isinstance(request.metadata.get("user_id"), str):
        body["user"] = request.metadata["user_id"]
    if request.compass is not msgspec.UNSET:
        body["compass"] = msgspec.to_builtins(request.compass)
    try:
        return msgspec.convert(body, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"this request cannot be routed: {exc}") from exc


def _tool_input(arguments: str | None) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}


def to_message(body: dict[str, Any], request_model: str) -> dict[str, Any]:
    """A chat completion as an Anthropic ``Message`` (the gateway's ``routing`` kept alongside)."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _tool_input(function.get("arguments")),
            }
        )
    usage = body.get("usage") or {}
    return {
        "id": message_id(body["id"]),
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or request_model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
        "routing": body.get("routing"),
    }


class StreamTranslator:
    """Chat chunks in, Anthropic's event sequence out (``(event, data)`` pairs)."""

    def __init__(self) -> None:
        self.started = False
        self.block: int = -1  # index of the open content block
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # chat tool_call index -> content block index
        self.stop_reason = "end_turn"
        self.usage: dict[str, int] = {}

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self.block_kind is None:
            return []
        self.block_kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.block})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        self.block += 1
        self.block_kind = kind
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.block, "content_block": block},
            )
        )
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if not self.started:
            self.started = True
            message = {
                "id": message_id(chunk.get("id", "")),
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            if chunk.get("routing") is not None:
                message["routing"] = chunk["routing"]
            events.append(("message_start", {"type": "message_start", "message": message}))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.block_kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self.block,
                            "delta": {"type": "text_delta", "text": delta["content"]},
                        },
                    )
                )
            for call in delta.get("tool_calls") or []:
                position = int(call.get("index", 0))
                function = call.get("function") or {}
                if position not in self.tool_blocks:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": {},
                    }
                    events += self._open("tool_use", block)
                    self.tool_blocks[position] = self.block
                if function.get("arguments"):
                    events.append(
                        (
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": self.tool_blocks[position],
                                "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
                            },
                        )
                    )
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return events

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        usage = {
            "input_tokens": int(self.usage.get("prompt_tokens") or 0),
            "output_tokens": int(self.usage.get("completion_tokens") or 0),
        }
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events


async def anthropic_events(chat_events: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The chat stream's SSE data (JSON chunks, ``[DONE]``, error bodies) as Anthropic events."""
    translator = StreamTranslator()
    async for data in chat_events:
        if data == "[DONE]":
            for event in translator.finish():
                yield event
            return
        chunk = _DECODE.decode(data)
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            yield (
                "error",
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": str(error.get("message", "error"))},
                },
            )
            return
        for event in translator.chunk(chunk):
            yield event
