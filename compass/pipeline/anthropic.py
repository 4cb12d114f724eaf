"""Anthropic Messages onto the chat pipeline: request → chat request, chat body → Message, chunks → events.

The upstream speaks chat completions, so any pool model answers whatever its provider, and
routing, the cache, feedback (by the ``msg_`` id), history, stats and metrics are the chat
pipeline's own: one ``Exchange`` per request.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from msgspec import UNSET

from compass.errors import InvalidRequest
from compass.pipeline.routing import ROUTED_MODELS
from compass.wire.anthropic import CountTokensRequest, MessagesRequest, anthropic_error, from_openai_error
from compass.wire.chat import ChatCompletionRequest

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_JSON = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder().decode


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def block_text(content: Any) -> str:
    """The text of a string or a list of text blocks (system, tool_result content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as a chat ``image_url`` part (base64 as a data URL)."""
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest(f"{where}: an image needs a base64 or url source", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def user_messages(content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: tool results first (as ``tool`` messages, which must follow the call), then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(image_part(block, f"{where}.content[{i}]"))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest(f"{where}.content[{i}].tool_use_id is required", param=where)
            text = block_text(block.get("content"))
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            parts.extend(
                image_part(b, where)
                for b in block.get("content") or []
                if isinstance(b, dict) and b.get("type") == "image"
            )
        elif kind == "document" and (block.get("source") or {}).get("type") == "text":
            parts.append({"type": "text", "text": str(block["source"].get("data", ""))})
        else:
            raise InvalidRequest(
                f"{where}.content[{i}]: content block type {kind!r} is not supported", param=where
            )
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return out


def assistant_message(content: str | list[dict[str, Any]], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest(f"{where}.content[{i}]: tool_use needs an id and a name", param=where)
            arguments = json.dumps(block.get("input") or {})
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # provider-specific reasoning; chat upstreams do not take it back
        else:
            raise InvalidRequest(
                f"{where}.content[{i}]: content block type {kind!r} is not supported", param=where
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def chat_messages(request: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system is not UNSET:
        system = block_text(request.system)
        if system:
            messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        if message.role == "user":
            messages.extend(user_messages(message.content, where))
        else:
            messages.append(assistant_message(message.content, where))
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"tools[{index}]: server tool {tool['type']!r} is not supported; only client tools are",
                param=f"tools[{index}].type",
            )
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object"},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice["type"]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def routed_model(model: str) -> str:
    """A Claude name the pool does not hold is routed (so Claude Code works unchanged); others pass."""
    return "auto" if model.startswith("claude") and model not in ROUTED_MODELS else model


def to_chat(request: MessagesRequest, pool: Any) -> ChatCompletionRequest:
    """The chat request the pipeline runs; ``top_k`` is dropped (chat completions has no such field)."""
    body: dict[str, Any] = {
        "messages": chat_messages(request),
        "model": request.model if request.model in pool else routed_model(request.model),
        "max_tokens": request.max_tokens,
        "stream": request.wants_stream,
    }
    if request.wants_stream:
        body["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    if request.stop_sequences is not UNSET:
        body["stop"] = request.stop_sequences
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not UNSET:
            body[name] = getattr(request, name)
    metadata = request.metadata
    if metadata is not UNSET and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    if request.tools is not UNSET and request.tools:
        body["tools"] = chat_tools(request.tools)
        if request.tool_choice is not UNSET:
            body["tool_choice"] = chat_tool_choice(request.tool_choice)
            if request.tool_choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False
    fmt = request.output_config.get("format") if request.output_config is not UNSET else None
    if fmt:  # structured outputs: Anthropic's JSON schema format as chat's response_format
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    if request.compass is not UNSET:
        body["compass"] = msgspec.to_builtins(request.compass)
    try:
        return msgspec.convert(body, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from exc


def stop_reason(choice: dict[str, Any], stops: list[str] | None) -> tuple[str, str | None]:
    """Anthropic's stop reason; the matched sequence when the provider says it (vLLM's ``stop_reason``)."""
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and stops and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn"), None


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def to_message(body: dict[str, Any], request: MessagesRequest) -> dict[str, Any]:
    """A ``chat.completion`` body (with ``routing``) as an Anthropic ``Message``."""
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
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments", "")),
            }
        )
    reason, sequence = stop_reason(choice, request.stop_sequences or None)
    return {
        "id": body["id"],
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(body.get("usage")),
        "routing": body.get("routing"),
    }


def event(name: str, data: dict[str, Any]) -> tuple[str, str]:
    """``(event name, JSON data)``; the edge frames it as an SSE message."""
    return name, _JSON.encode({"type": name, **data}).decode()


async def to_events(
    chunks: AsyncIterator[str], request: MessagesRequest
) -> AsyncIterator[list[tuple[str, str]]]:
    """The chat pipeline's SSE bodies (chunks, ``[DONE]`` or an error body) as Anthropic's events.

    One batch of events per chunk, so the edge writes each burst as one body chunk.
    """
    block: tuple[str, int] | None = None  # ("text", -1) or ("tool", chat tool index)
    index = -1
    started = False
    usage: dict[str, Any] | None = None
    choice_end: dict[str, Any] = {}
    async for raw in chunks:
        out: list[tuple[str, str]] = []
        if raw == "[DONE]":
            if block is not None:
                out.append(event("content_block_stop", {"index": index}))
            reason, sequence = stop_reason(choice_end, request.stop_sequences or None)
            delta = {"stop_reason": reason, "stop_sequence": sequence}
            out.append(event("message_delta", {"delta": delta, "usage": anthropic_usage(usage)}))
            out.append(event("message_stop", {}))
            yield out
            return
        chunk = _DECODE(raw)
        if "error" in chunk and "choices" not in chunk:
            status = 504 if chunk["error"].get("type") == "timeout" else 502
            yield [event("error", {"error": from_openai_error(status, chunk)[1]["error"]})]
            return
        if not started:
            started = True
            message = {
                "id": chunk.get("id"),
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
                "routing": chunk.get("routing"),
            }
            out.append(event("message_start", {"message": message}))
            out.append(event("ping", {}))
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if block is None or block[0] != "text":
                    if block is not None:
                        out.append(event("content_block_stop", {"index": index}))
                    index += 1
                    block = ("text", -1)
                    out.append(
                        event(
                            "content_block_start",
                            {"index": index, "content_block": {"type": "text", "text": ""}},
                        )
                    )
                out.append(
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": delta["content"]}},
                    )
                )
            for call in delta.get("tool_calls") or []:
                position = int(call.get("index", 0))
                function = call.get("function") or {}
                if block != ("tool", position):
                    if block is not None:
                        out.append(event("content_block_stop", {"index": index}))
                    index += 1
                    block = ("tool", position)
                    start = {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    out.append(event("content_block_start", {"index": index, "content_block": start}))
                if function.get("arguments"):
                    piece = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out.append(event("content_block_delta", {"index": index, "delta": piece}))
            if choice.get("finish_reason"):
                choice_end = choice
        if out:
            yield out
    yield [
        event(
            "error", {"error": anthropic_error(502, "the upstream stream ended without finishing")["error"]}
        )
    ]


def count_tokens(request: CountTokensRequest, model: str | None) -> tuple[int, str]:
    """``(input_tokens, counter)``: LiteLLM's token counter (tiktoken's encodings), else ~4 chars a token."""
    messages = chat_messages(request)
    tools = chat_tools(request.tools) if request.tools is not UNSET and request.tools else None
    try:
        import litellm

        return int(litellm.token_counter(model=model or "gpt-4o", messages=messages, tools=tools)), "litellm"
    except Exception:
        from compass.pipeline.routing import approx_tokens

        extra = len(json.dumps(tools)) // 4 if tools else 0
        return approx_tokens(messages) + extra, "approx"
