"""The fake OpenAI-compatible upstream: an aiohttp app with ``/v1/chat/completions`` and friends.

Endpoints: ``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/embeddings`` (stable 16-d
vectors from a hash of each input, base64 on request), ``GET /v1/models``, ``GET /health``,
``GET /fake/requests`` (bodies received, oldest first), ``POST /fake/config`` (replace behaviours at
run time, e.g. for fault tests), ``POST /fake/reset`` (clear the history), ``POST /fake/grade``
(``{"model", "prompt"}`` → ``{"score"}``, the simulated answer quality).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from compass.upstream.demo.answers import (
    answer_tokens,
    apply_stop,
    grade,
    json_answer,
    last_user_text,
    logprobs_for,
    parse_directives,
    prompt_tokens,
    tool_call,
)
from compass.upstream.demo.config import FakeModelBehaviour, FakeUpstreamConfig

HISTORY_LIMIT = 10_000
STATE = web.AppKey("state", "FakeState")


class FakeState:
    def __init__(self, config: FakeUpstreamConfig) -> None:
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.rng = random.Random(config.seed)

    def behaviour(self, model: str) -> FakeModelBehaviour | None:
        found = self.config.models.get(model)
        if found is None and self.config.accept_any_model:
            return FakeModelBehaviour()
        return found

    def record(self, body: dict[str, Any]) -> None:
        self.history.append(body)
        if len(self.history) > HISTORY_LIMIT:
            del self.history[: len(self.history) - HISTORY_LIMIT]


def error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def upstream_error(status: int) -> web.Response:
    if status == 429:
        return error(429, "Rate limit reached (fake upstream)", "rate_limit_error", "rate_limit_exceeded")
    return error(status, f"The fake upstream failed with {status} as asked", "server_error", "upstream_error")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.json(loads=msgspec.json.decode)
    except Exception:
        return error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    if not isinstance(body, dict):
        return error(400, "The body must be a JSON object.", "invalid_request_error")
    state.record(body)
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return error(400, "you must provide a model parameter", "invalid_request_error", param="model")
    if not isinstance(messages, list) or not messages:
        return error(400, "messages must be a non-empty array", "invalid_request_error", param="messages")
    behaviour = state.behaviour(model)
    if behaviour is None:
        return error(
            404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found", "model"
        )

    prompt = last_user_text(messages)
    directives = parse_directives(prompt, model)
    if directives.hang_s is not None or state.rng.random() < behaviour.timeout_rate:
        await asyncio.sleep(directives.hang_s if directives.hang_s is not None else behaviour.hang_s)
    status = directives.error or (
        behaviour.error_status if state.rng.random() < behaviour.error_rate else None
    )
    delay = directives.delay_ms if directives.delay_ms is not None else behaviour.latency_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    if status:
        return upstream_error(status)

    try:
        plan = plan_answer(body, model, prompt, behaviour, directives.tokens)
    except (AttributeError, TypeError, ValueError) as exc:  # malformed tools/n/response_format, as OpenAI
        return error(400, f"Invalid request body: {exc}", "invalid_request_error")
    if body.get("stream"):
        broken = directives.stream_error or state.rng.random() < behaviour.stream_error_rate
        return await stream_answer(request, body, model, plan, behaviour, broken)
    if behaviour.tokens_per_s > 0:
        await asyncio.sleep(plan["completion_tokens"] / behaviour.tokens_per_s)
    return web.Response(
        body=msgspec.json.encode(completion_body(body, model, plan)), content_type="application/json"
    )


def plan_answer(
    body: dict[str, Any], model: str, prompt: str, behaviour: FakeModelBehaviour, forced_tokens: int | None
) -> dict[str, Any]:
    """Every choice's content (or tool call), finish reason and token counts, decided up front."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n") or 1
    choices = []
    for index in range(int(n)):
        answered = (body["messages"][-1] or {}).get("role") == "tool"  # a tool result: answer in words
        call = (
            None if answered else tool_call(body.get("tools") or [], body.get("tool_choice"), prompt, model)
        )
        if call is not None:
            choices.append(
                {"tool_call": call, "tokens": [call["function"]["arguments"]], "finish": "tool_calls"}
            )
            continue
        tokens = answer_tokens(prompt, model, forced_tokens or behaviour.completion_tokens, index)
        finish = "stop"
        tokens, _ = apply_stop(tokens, body.get("stop"))
        if isinstance(limit, int) and limit > 0 and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        response_format = body.get("response_format") or {}
        if response_format.get("type") in ("json_object", "json_schema") and finish == "stop":
            tokens = [json_answer(tokens, response_format)]
        choices.append({"tokens": tokens, "finish": finish})
    completion = sum(
        max(1, len("".join(c["tokens"])) // 4) if c.get("tool_call") else len(c["tokens"]) for c in choices
    )
    return {
        "id": "chatcmpl-fake-" + uuid.uuid4().hex[:20],
        "created": int(time.time()),
        "choices": choices,
        "prompt_tokens": prompt_tokens(body["messages"]),
        "completion_tokens": completion,
    }


def usage(plan: dict[str, Any]) -> dict[str, int]:
    p, c = plan["prompt_tokens"], plan["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_body(body: dict[str, Any], model: str, plan: dict[str, Any]) -> dict[str, Any]:
    top = int(body.get("top_logprobs") or 0)
    choices = []
    for index, choice in enumerate(plan["choices"]):
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if "tool_call" in choice:
            message["tool_calls"] = [choice["tool_call"]]
        else:
            message["content"] = "".join(choice["tokens"])
        logprobs = (
            logprobs_for(choice["tokens"], top)
            if body.get("logprobs") and "tool_call" not in choice
            else None
        )
        choices.append(
            {"index": index, "message": message, "logprobs": logprobs, "finish_reason": choice["finish"]}
        )
    return {
        "id": plan["id"],
        "object": "chat.completion",
        "created": plan["created"],
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        "usage": usage(plan),
    }


def chunk(plan: dict[str, Any], model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    payload = {
        "id": plan["id"],
        "object": "chat.completion.chunk",
        "created": plan["created"],
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        **extra,
    }
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


async def stream_answer(
    request: web.Request,
    body: dict[str, Any],
    model: str,
    plan: dict[str, Any],
    behaviour: FakeModelBehaviour,
    broken: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    pause = 1 / behaviour.tokens_per_s if behaviour.tokens_per_s > 0 else 0.0
    sent = 0
    for index, choice in enumerate(plan["choices"]):
        first = {"role": "assistant", "content": "" if "tool_call" not in choice else None}
        await response.write(chunk(plan, model, [{"index": index, "delta": first, "finish_reason": None}]))
        if "tool_call" in choice:
            call = choice["tool_call"]
            head = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await response.write(
                chunk(plan, model, [{"index": index, "delta": {"tool_calls": [head]}, "finish_reason": None}])
            )
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 8):
                piece = {"index": 0, "function": {"arguments": arguments[start : start + 8]}}
                await response.write(
                    chunk(
                        plan,
                        model,
                        [{"index": index, "delta": {"tool_calls": [piece]}, "finish_reason": None}],
                    )
                )
        else:
            for token in choice["tokens"]:
                if pause:
                    await asyncio.sleep(pause)
                await response.write(
                    chunk(plan, model, [{"index": index, "delta": {"content": token}, "finish_reason": None}])
                )
                sent += 1
                if broken and sent >= 3:
                    # Like a provider dying mid-answer: an error event, then the connection drops.
                    failure = {
                        "error": {
                            "message": "fake upstream broke the stream",
                            "type": "server_error",
                            "code": "stream_error",
                        }
                    }
                    await response.write(b"data: " + msgspec.json.encode(failure) + b"\n\n")
                    request.transport.close() if request.transport else None
                    return response
        await response.write(
            chunk(plan, model, [{"index": index, "delta": {}, "finish_reason": choice["finish"]}])
        )
    if include_usage:
        await response.write(chunk(plan, model, [], usage=usage(plan)))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def embeddings(request: web.Request) -> web.Response:
    """Deterministic unit vectors: the same input always gets the same vector."""
    import base64
    import hashlib
    import struct

    try:
        body = await request.json(loads=msgspec.json.decode)
    except Exception:
        return error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return error(400, "you must provide a model parameter", "invalid_request_error", param="model")
    request.app[STATE].record(body)
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs
    if not isinstance(items, list) or not items:
        return error(400, "input must be a non-empty string or array", "invalid_request_error", param="input")
    dims = int(body.get("dimensions") or 16)
    data, tokens = [], 0
    for index, item in enumerate(items):
        digest = hashlib.sha256(msgspec.json.encode(item)).digest() * (dims // 32 + 1)
        raw = [b - 127.5 for b in digest[:dims]]
        norm = sum(x * x for x in raw) ** 0.5 or 1.0
        vector: Any = [x / norm for x in raw]
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens += len(item) if isinstance(item, list) else max(1, len(str(item)) // 4)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})


async def list_models(request: web.Request) -> web.Response:
    names = sorted(request.app[STATE].config.models)
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake-upstream"} for n in names]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "models": sorted(request.app[STATE].config.models)})


async def fake_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].history)


async def fake_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.config = msgspec.json.decode(await request.read(), type=FakeUpstreamConfig)
    except msgspec.ValidationError as exc:
        return error(400, str(exc), "invalid_request_error")
    return web.json_response(msgspec.to_builtins(state.config))


async def fake_reset(request: web.Request) -> web.Response:
    request.app[STATE].history.clear()
    return web.json_response({"ok": True})


async def fake_grade(request: web.Request) -> web.Response:
    body = await request.json()
    behaviour = request.app[STATE].behaviour(str(body.get("model")))
    if behaviour is None:
        return error(404, "unknown model", "invalid_request_error", "model_not_found")
    return web.json_response(
        {"score": grade(str(body.get("prompt", "")), str(body["model"]), behaviour.quality)}
    )


def build_app(config: FakeUpstreamConfig, state: FakeState | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = state or FakeState(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/fake/requests", fake_requests)
    app.router.add_post("/fake/config", fake_config)
    app.router.add_post("/fake/reset", fake_reset)
    app.router.add_post("/fake/grade", fake_grade)
    return app
