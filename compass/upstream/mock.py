"""An in-process upstream for unit tests, shaped like llm's ``MockModel``.

``enqueue(text)`` or ``enqueue_error(exc)`` sets what the next calls return; ``history`` keeps
every call's ``(model, messages, params)``. With an empty queue it echoes the last user turn.
End-to-end tests use the real fake upstream server (``compass.upstream.demo``) instead.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from compass.upstream.base import Upstream
from compass.wire.chat import last_user_text
from layers.types import ModelSpec


class MockUpstream(Upstream):
    name = "mock"

    def __init__(self, **_: Any) -> None:
        self._queue: deque[str | Exception] = deque()
        self.history: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []

    def enqueue(self, *texts: str) -> None:
        self._queue.extend(texts)

    def enqueue_error(self, error: Exception) -> None:
        self._queue.append(error)

    def _next(self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        self.history.append((model.name, messages, params))
        item = self._queue.popleft() if self._queue else f"echo: {last_user_text(messages)}"
        if isinstance(item, Exception):
            raise item
        return item

    @staticmethod
    def _usage(messages: list[dict[str, Any]], text: str) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1
        completion = len(text.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def complete(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        text = self._next(model, messages, params)
        return {
            "id": f"mock-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.litellm_model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": self._usage(messages, text),
        }

    async def stream(
        self, model: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        text = self._next(model, messages, params)
        base = {"id": "mock-stream", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = model.litellm_model
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        for word in text.split(" "):
            yield {**base, "choices": [{"index": 0, "delta": {"content": word + " "}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {**base, "choices": [], "usage": self._usage(messages, text)}

    async def embed(self, model: ModelSpec, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
        """Stable 8-d vectors from a hash of each input; ``history`` records ``(model, inputs, params)``."""
        self.history.append((model.name, inputs, params))
        item = self._queue.popleft() if self._queue else None
        if isinstance(item, Exception):
            raise item
        data = []
        for index, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append({"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]})
        tokens = sum(len(str(text).split()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model.litellm_model, "usage": usage}
