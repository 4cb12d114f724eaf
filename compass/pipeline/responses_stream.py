"""Chat completion chunks → the Responses API's server-sent events.

The chat stream (``pipeline/streaming.py``: routing, cache replay, fallbacks before the first
token, the history row) is read as it goes out and re-emitted as ``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` … ``response.completed``, with function calls as
``response.function_call_arguments.delta`` / ``.done``. A stream that breaks ends with
``response.failed``.

Events come out in batches, one per upstream chunk (plus the prologue and the epilogue), so the
edge writes a burst of events as one body chunk instead of one write per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from compass.pipeline.responses import RESPONSE_PREFIX, output_items, response_object
from compass.pipeline.streaming import DONE, StreamAccumulator
from compass.wire.responses import ResponsesRequest

Event = tuple[str, dict[str, Any]]
Batch = list[Event]


class _Emitter:
    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, event


async def response_events(
    request: ResponsesRequest,
    chunks: AsyncIterator[str],
    resp_id: str,
    model: str,
    created_at: float,
    on_done: Callable[[dict[str, Any]], None],
) -> AsyncIterator[Batch]:
    """Translate the encoded chat chunks, a batch of events per chunk.

    ``on_done(response)`` runs once the stream completed.
    """
    emit = _Emitter()
    base = resp_id.removeprefix(RESPONSE_PREFIX)
    pending = response_object(request, resp_id, model, created_at, [], status="in_progress")
    yield [emit("response.created", response=pending), emit("response.in_progress", response=pending)]
    acc = StreamAccumulator()
    routing: dict[str, Any] | None = None
    text_index: int | None = None
    calls: dict[int, tuple[int, str]] = {}  # chat tool-call index → (output index, item id)
    opened = 0
    text_id = f"msg_{base}"
    async for raw in chunks:
        if raw == DONE:
            break
        chunk = msgspec.json.decode(raw)
        if chunk.get("error") and not chunk.get("choices"):
            failed = response_object(request, resp_id, model, created_at, [], status="failed")
            failed["error"] = {"code": "server_error", "message": str(chunk["error"].get("message", ""))}
            yield [emit("response.failed", response=failed)]
            return
        acc.add(chunk)
        out: Batch = []
        model = chunk.get("model") or model
        routing = chunk.get("routing") or routing
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if text_index is None:
                    text_index, opened = opened, opened + 1
                    item = {"type": "message", "id": text_id, "status": "in_progress", "role": "assistant"}
                    out.append(
                        emit(
                            "response.output_item.added",
                            output_index=text_index,
                            item={**item, "content": []},
                        )
                    )
                    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    out.append(
                        emit(
                            "response.content_part.added",
                            item_id=text_id,
                            output_index=text_index,
                            content_index=0,
                            part=part,
                        )
                    )
                out.append(
                    emit(
                        "response.output_text.delta",
                        item_id=text_id,
                        output_index=text_index,
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                position = int(call.get("index", 0))
                if position not in calls:
                    item_id = f"fc_{base}_{position}"
                    calls[position] = (opened, item_id)
                    opened += 1
                    function = call.get("function") or {}
                    item = {
                        "type": "function_call",
                        "id": item_id,
                        "call_id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "arguments": "",
                        "status": "in_progress",
                    }
                    out.append(emit("response.output_item.added", output_index=calls[position][0], item=item))
                arguments = (call.get("function") or {}).get("arguments")
                if arguments:
                    index, item_id = calls[position]
                    out.append(
                        emit(
                            "response.function_call_arguments.delta",
                            item_id=item_id,
                            output_index=index,
                            delta=arguments,
                        )
                    )
        if out:
            yield out
    final = output_items(acc.message(), base)
    out = []
    by_id = {item["id"]: item for item in final}
    if text_index is not None and text_id in by_id:
        item = by_id[text_id]
        part = item["content"][0]
        out.append(
            emit(
                "response.output_text.done",
                item_id=text_id,
                output_index=text_index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
        )
        out.append(
            emit(
                "response.content_part.done",
                item_id=text_id,
                output_index=text_index,
                content_index=0,
                part=part,
            )
        )
        out.append(emit("response.output_item.done", output_index=text_index, item=item))
    for index, item_id in sorted(calls.values()):
        item = by_id.get(item_id)
        if item is None:
            continue
        out.append(
            emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=item["arguments"],
                name=item["name"],
            )
        )
        out.append(emit("response.output_item.done", output_index=index, item=item))
    ordered = sorted(final, key=lambda item: _position(item, text_id, text_index, calls))
    done = response_object(
        request,
        resp_id,
        model,
        created_at,
        ordered,
        usage=acc.usage or {},
        finish_reason=acc.finish_reason,
    )
    if routing is not None:
        done["routing"] = routing
    on_done(done)
    out.append(emit("response.completed", response=done))
    yield out


def _position(item: dict[str, Any], text_id: str, text_index: int | None, calls: dict) -> int:
    if item["id"] == text_id:
        return text_index or 0
    for index, item_id in calls.values():
        if item_id == item["id"]:
            return index
    return 1 << 30
