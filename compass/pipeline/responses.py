"""The Responses API translated onto the chat pipeline: request → chat request, chat body → Response.

Upstreams speak chat completions only, so a Responses request becomes a ``ChatCompletionRequest``
and goes through the same ``Exchange`` (routing, cache, fallbacks, history, metrics). The response
id is the chat request id with another prefix (``resp_<hex>`` for ``chatcmpl-<hex>``), so
``/feedback`` and the history row are found from either.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from compass.errors import InvalidRequest, UnsupportedParameter
from compass.wire.chat import ChatCompletionRequest, message_text
from compass.wire.responses import ResponsesRequest

CHAT_PREFIX = "chatcmpl-"
RESPONSE_PREFIX = "resp_"

# Responses parameters copied onto the chat request under the same name.
_SAME_NAME = (
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "compass",
)


def response_id(request_id: str) -> str:
    return RESPONSE_PREFIX + request_id.removeprefix(CHAT_PREFIX)


def request_id_of(resp_id: str) -> str:
    """The history row's id for a response id (``/feedback`` takes either)."""
    return (
        CHAT_PREFIX + resp_id.removeprefix(RESPONSE_PREFIX)
        if resp_id.startswith(RESPONSE_PREFIX)
        else resp_id
    )


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Responses content parts → chat content (a string when it is only text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal") and isinstance(
            part.get("text", part.get("refusal")), str
        ):
            parts.append({"type": "text", "text": part.get("text", part.get("refusal"))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"{where}.content[{index}]: part type {kind!r} is not supported here",
                param=f"{where}.content[{index}].type",
            )
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items → chat messages; consecutive ``function_call`` items make one assistant turn."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(
                    f"{where}.role must be user, assistant, system or developer", param=where
                )
            if "content" not in item:
                raise InvalidRequest(f"{where}.content is required", param=f"{where}.content")
            messages.append({"role": role, "content": _content(item["content"], where)})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise InvalidRequest(f"{where}: function_call needs call_id, name and arguments", param=where)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, (str, list)):
                raise InvalidRequest(f"{where}: function_call_output needs call_id and output", param=where)
            text = output if isinstance(output, str) else message_text(_content(output, where))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # a provider's own reasoning items cannot be replayed to another model
        else:
            raise UnsupportedParameter(f"{where}: input item type {kind!r} is not supported", param=where)
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise UnsupportedParameter(
                f"tools[{index}]: only function tools are supported, not {tool.get('type')!r}",
                param=f"tools[{index}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidRequest(f"tools[{index}].name is required", param=f"tools[{index}].name")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise UnsupportedParameter("tool_choice: only auto, none, required or a function", param="tool_choice")


def response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise InvalidRequest("text.format json_schema needs name and schema", param="text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise UnsupportedParameter(f"text.format type {fmt['type']!r} is not supported", param="text.format")


def to_chat(request: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list]:
    """``(chat request, conversation)``: the conversation is history + this input, without instructions."""
    conversation = [*history, *input_messages(request.input)]
    messages = list(conversation)
    if isinstance(request.instructions, str) and request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    body: dict[str, Any] = {"messages": messages}
    for name in _SAME_NAME:
        value = getattr(request, name)
        if value is not msgspec.UNSET and value is not None:
            body[name] = value
    if request.max_output_tokens not in (msgspec.UNSET, None):
        body["max_tokens"] = request.max_output_tokens
    if request.tools:
        body["tools"] = chat_tools(request.tools)
    if request.tool_choice not in (msgspec.UNSET, None):
        body["tool_choice"] = chat_tool_choice(request.tool_choice)  # type: ignore[arg-type]
    if isinstance(request.text, dict) and (fmt := response_format(request.text)) is not None:
        body["response_format"] = fmt
    if isinstance(request.reasoning, dict) and request.reasoning.get("effort"):
        body["reasoning_effort"] = request.reasoning["effort"]
    if request.top_logprobs not in (msgspec.UNSET, None):
        body["logprobs"], body["top_logprobs"] = True, request.top_logprobs
    if request.wants_stream:
        body["stream"], body["stream_options"] = True, {"include_usage": True}
    if isinstance(body.get("compass"), msgspec.Struct):
        body["compass"] = msgspec.to_builtins(body["compass"])
    try:
        return msgspec.convert(body, ChatCompletionRequest), conversation
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"the request cannot be translated to chat: {exc}") from exc


def output_items(message: dict[str, Any], base_id: str) -> list[dict[str, Any]]:
    """A chat assistant message → Responses output items (one message, then function calls)."""
    items: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        items.append(
            {
                "type": "message",
                "id": f"msg_{base_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{base_id}_{position}",
                "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "arguments": function.get("arguments", ""),
                "status": "completed",
            }
        )
    return items


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    reasoning = int(((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def response_object(
    request: ResponsesRequest,
    resp_id: str,
    model: str,
    created_at: float,
    output: list[dict[str, Any]],
    status: str = "completed",
    usage: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """A ``response`` object as OpenAI returns it, with the request's settings echoed back."""

    def given(value: Any, default: Any = None) -> Any:
        return default if value is msgspec.UNSET or value is None else value

    incomplete = None
    if status == "completed" and finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    text = given(request.text, {"format": {"type": "text"}})
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": time.time() if status in ("completed", "incomplete") else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": given(request.instructions),
        "max_output_tokens": given(request.max_output_tokens),
        "model": model,
        "output": output,
        "parallel_tool_calls": given(request.parallel_tool_calls, True),
        "previous_response_id": given(request.previous_response_id),
        "reasoning": given(request.reasoning, {"effort": None, "summary": None}),
        "store": request.wants_store,
        "temperature": given(request.temperature, 1.0),
        "text": text,
        "tool_choice": given(request.tool_choice, "auto"),
        "tools": given(request.tools, []),
        "top_p": given(request.top_p, 1.0),
        "truncation": given(request.truncation, "disabled"),
        "usage": response_usage(usage) if usage is not None else None,
        "user": given(request.user),
        "metadata": given(request.metadata, {}),
    }


def from_chat_body(request: ResponsesRequest, body: dict[str, Any], created_at: float) -> dict[str, Any]:
    """A finished ``chat.completion`` body (with its ``routing``) → a Response object."""
    resp_id = response_id(body["id"])
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out = response_object(
        request,
        resp_id,
        body.get("model", ""),
        created_at,
        output_items(message, resp_id.removeprefix(RESPONSE_PREFIX)),
        usage=body.get("usage") or {},
        finish_reason=choice.get("finish_reason"),
    )
    if "routing" in body:
        out["routing"] = body["routing"]
    return out


def assistant_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as the chat messages that continue the conversation (``previous_response_id``)."""
    items = [item for item in output if item.get("type") in ("message", "function_call")]
    return input_messages(items) if items else []
