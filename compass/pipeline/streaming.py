"""Server-sent event bodies for streaming chat completions.

The first chunk carries the ``routing`` object. The upstream is always asked for usage; the
usage chunk reaches the client only if it asked (``stream_options.include_usage``). A stream
is stored in the cache only after it finished normally; a cached answer is replayed in the
same chunk format, usage and ``[DONE]`` included.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from compass.errors import CompassError, UpstreamError
from compass.wire.chat import message_text

if TYPE_CHECKING:
    from compass.pipeline.exchange import Exchange

_JSON = msgspec.json.Encoder()
DONE = "[DONE]"
REPLAY_WORDS_PER_CHUNK = 8


class StreamAccumulator:
    """Rebuilds the full answer from deltas (content, tool calls, finish reason, usage)."""

    def __init__(self) -> None:
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, int] | None = None
        self.created: int | None = None
        self.chunks = 0

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        self.created = self.created or chunk.get("created")
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            state = self.choices.setdefault(index, {"content": [], "tool_calls": {}, "finish_reason": None})
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = state["tool_calls"].setdefault(
                    int(call.get("index", 0)), {"id": None, "type": "function", "name": "", "arguments": ""}
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    def message(self, index: int = 0) -> dict[str, Any]:
        state = self.choices.get(index) or {"content": [], "tool_calls": {}, "finish_reason": None}
        message: dict[str, Any] = {"role": "assistant", "content": "".join(state["content"]) or None}
        if state["tool_calls"]:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for _, c in sorted(state["tool_calls"].items())
            ]
        return message

    @property
    def finish_reason(self) -> str | None:
        state = self.choices.get(0)
        return state["finish_reason"] if state else None

    def completion(self, request_id: str, model: str) -> dict[str, Any]:
        """The equivalent non-streaming ``chat.completion`` body (what the cache stores)."""
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": self.created or int(time.time()),
            "model": model,
            "choices": [
                {"index": i, "message": self.message(i), "finish_reason": self.choices[i]["finish_reason"]}
                for i in sorted(self.choices)
            ],
            "usage": self.usage or {},
        }


def estimate_usage(exchange: Exchange, completion_text: str) -> dict[str, int]:
    """When a provider omits usage in a stream: LiteLLM's token counter, else ~4 chars a token."""
    prompt = completion = 0
    try:
        import litellm

        assert exchange.model is not None
        model = exchange.model.litellm_model
        prompt = int(litellm.token_counter(model=model, messages=exchange.messages))
        completion = int(litellm.token_counter(model=model, text=completion_text)) if completion_text else 0
    except Exception:
        prompt = max(1, sum(len(message_text(m.get("content"))) for m in exchange.messages) // 4)
        completion = len(completion_text) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish(exchange: Exchange, acc: StreamAccumulator, start: float) -> None:
    """Copy what the stream produced onto the exchange, for its history row."""
    exchange.upstream_ms += (time.perf_counter() - start) * 1000
    exchange.reply = acc.message()
    exchange.content = exchange.reply.get("content") or ""
    exchange.finish_reason = acc.finish_reason
    exchange.usage = acc.usage or estimate_usage(exchange, exchange.content)


def _encode(chunk: dict[str, Any]) -> str:
    return _JSON.encode(chunk).decode()


async def upstream_stream(
    exchange: Exchange, chunks: AsyncIterator[dict[str, Any]], first: dict[str, Any]
) -> AsyncIterator[str]:
    include_usage = exchange.request.include_usage
    acc = StreamAccumulator()
    completed = False
    sent_routing = False
    assert exchange.model is not None
    model_name = exchange.model.name
    start = time.perf_counter()
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            acc.add(chunk)
            usage_only = not chunk.get("choices") and chunk.get("usage")
            if not include_usage:
                chunk.pop("usage", None)
            if not usage_only or include_usage:
                chunk["id"] = exchange.request_id
                chunk["model"] = model_name
                if not sent_routing:
                    chunk["routing"] = exchange.routing()
                    sent_routing = True
                yield _encode(chunk)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = None
        completed = True
        finish(exchange, acc, start)
        committed = exchange.record()
        if committed is not None:
            await committed  # durability strict: [DONE] only once the row is in the file
        yield DONE
    except CompassError as exc:
        exchange.fail(exc)
        broke_mid_stream(exchange)
        yield _encode(exc.body())
    except Exception as exc:  # an unexpected provider failure mid-stream: still an OpenAI error event
        error = UpstreamError(f"stream from {model_name!r} failed: {exc}")
        exchange.fail(error)
        broke_mid_stream(exchange)
        yield _encode(error.body())
    finally:
        if not exchange.recorded:
            finish(exchange, acc, start)
            if not completed and exchange.status == 200:
                exchange.status = 499
                exchange.error = "client disconnected before the stream ended"
            exchange.record()
        if completed and exchange.status == 200:
            body = acc.completion(exchange.request_id, model_name)
            body["usage"] = exchange.usage
            exchange.start_cache_store(body)


def broke_mid_stream(exchange: Exchange) -> None:
    """A stream that breaks after its first chunk is the model failing: its circuit and Layer 2 learn it."""
    if exchange.model is not None and exchange.status >= 500:
        exchange.services.breakers[exchange.model.name].failure()
        exchange.model_failed(exchange.model)


def replay_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A stored ``chat.completion`` as the chunk sequence a provider would have streamed."""
    base = {"object": "chat.completion.chunk", "created": int(time.time())}
    chunks: list[dict[str, Any]] = []
    for choice in body.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}}]})
        words = (message.get("content") or "").split(" ")
        text = message.get("content") or ""
        if text:
            for i in range(0, len(words), REPLAY_WORDS_PER_CHUNK):
                piece = " ".join(words[i : i + REPLAY_WORDS_PER_CHUNK])
                if i + REPLAY_WORDS_PER_CHUNK < len(words):
                    piece += " "
                chunks.append({**base, "choices": [{"index": index, "delta": {"content": piece}}]})
        for position, call in enumerate(message.get("tool_calls") or []):
            delta = {"tool_calls": [{"index": position, **call}]}
            chunks.append({**base, "choices": [{"index": index, "delta": delta}]})
        finish = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
        chunks.append({**base, "choices": [finish]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body.get("usage") or {}})
    return chunks


async def cached_stream(exchange: Exchange, body: dict[str, Any]) -> AsyncIterator[str]:
    routing = exchange.routing()
    model_name = exchange.model.name if exchange.model else body.get("model")
    completed = False
    try:
        for position, chunk in enumerate(replay_chunks(body, exchange.request.include_usage)):
            chunk["id"] = exchange.request_id
            chunk["model"] = model_name
            if position == 0:
                chunk["routing"] = routing
            yield _encode(chunk)
        completed = True
        committed = exchange.record()
        if committed is not None:
            await committed
        yield DONE
    finally:
        if not completed:
            exchange.status = 499
            exchange.error = "client disconnected before the stream ended"
            exchange.record()
