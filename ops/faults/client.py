"""An aiohttp chat client that records what a caller saw: status, latency, stream ending, error body.

Every harness (load, faults, crash, tests) sends requests through ``chat()`` so "the client got a
2xx" means the same thing everywhere: a 200 JSON body with an id, or a 200 stream that ended in
``[DONE]`` without an error event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from ops.faults.harness import StreamOutcome, is_openai_error, json_or_none, loopback_only, read_stream

TOPICS = (
    "sorting a list of dates",
    "the capital of Australia",
    "a haiku about autumn",
    "how TCP slow start works",
    "why the sky is blue",
    "a SQL query for the top customers",
    "unit conversion from miles to km",
    "the difference between a mutex and a semaphore",
)
HARD = (
    "Prove that there are infinitely many primes and derive a bound on the gap between them. ",
    "Design an algorithm to optimise delivery routes for 200 trucks with time windows. ",
)


def make_prompt(rng: random.Random) -> str:
    """Short, medium and long prompts, each unique (so never a cache hit)."""
    kind = rng.random()
    topic = TOPICS[rng.randrange(len(TOPICS))]
    tag = rng.getrandbits(32)
    if kind < 0.5:
        return f"Quick question #{tag}: {topic}?"
    if kind < 0.85:
        return f"Request {tag}. Please explain {topic} in detail, with an example and the pitfalls. " * 3
    return f"Task {tag}. " + HARD[rng.randrange(len(HARD))] * 6


def make_request(rng: random.Random, repeat_share: float = 0.0) -> tuple[str, dict[str, Any]]:
    """``(prompt, extra body fields)``: ``repeat_share`` of them are repeated questions asked at
    temperature 0, which the cache's policy stores and serves; the rest are unique prompts."""
    if rng.random() < repeat_share:
        return f"Explain {TOPICS[rng.randrange(len(TOPICS))]}.", {"temperature": 0}
    return make_prompt(rng), {}


@dataclass
class Reply:
    """One request as the client saw it."""

    status: int  # HTTP status; 0 when the connection failed or timed out
    ms: float
    stream: bool
    prompt: str = ""
    body: Any = None
    outcome: StreamOutcome | None = None
    ttft_ms: float | None = None
    finished_at: float = 0.0  # time.monotonic() when the last byte arrived
    transport_error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        if self.stream and self.outcome is not None:
            return self.outcome.request_id
        return self.body.get("id") if isinstance(self.body, dict) else None

    @property
    def model(self) -> str | None:
        return self.headers.get("x-compass-model")

    @property
    def ok(self) -> bool:
        """A 2xx the client can use: a completion body, or a stream that ended normally."""
        if self.status != 200:
            return False
        if self.stream:
            return self.outcome is not None and self.outcome.done and self.outcome.error is None
        return isinstance(self.body, dict) and bool(self.body.get("choices"))

    @property
    def clean_error(self) -> bool:
        """A failure reported the OpenAI way (error status + body, or an error event in a stream)."""
        if self.status >= 400:
            return is_openai_error(self.body)
        if self.status == 200 and self.stream and self.outcome is not None:
            return self.outcome.error is not None and is_openai_error(self.outcome.error)
        return False


def chat_body(prompt: str, stream: bool, model: str = "auto", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def chat(
    session: Any,
    base_url: str,
    prompt: str,
    stream: bool,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Reply:
    """POST one chat completion; never raises for HTTP or transport failures."""
    import aiohttp

    loopback_only(base_url)
    start = time.perf_counter()
    reply = Reply(status=0, ms=0.0, stream=stream, prompt=prompt)
    try:
        async with session.post(
            f"{base_url}/v1/chat/completions",
            json=chat_body(prompt, stream, **extra),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            reply.status = response.status
            reply.headers = {k.lower(): v for k, v in response.headers.items()}
            if stream and response.status == 200:
                parts = []
                async for piece in response.content.iter_any():
                    if reply.ttft_ms is None:
                        reply.ttft_ms = (time.perf_counter() - start) * 1000
                    parts.append(piece)
                reply.outcome = read_stream(b"".join(parts).decode("utf-8", errors="replace"))
            else:
                reply.body = json_or_none(await response.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        reply.transport_error = f"{type(exc).__name__}: {exc}"
    reply.ms = (time.perf_counter() - start) * 1000
    reply.finished_at = time.monotonic()
    return reply


async def grade_and_feedback(
    session: Any, fake_root: str, base_url: str, reply: Reply, headers: dict[str, str] | None = None
) -> bool:
    """Ask the fake upstream how good the answer was and send that score to ``/feedback``."""
    if reply.request_id is None or reply.model is None:
        return False
    async with session.post(
        f"{fake_root}/fake/grade", json={"model": reply.model, "prompt": reply.prompt}
    ) as response:
        score = (await response.json())["score"]
    async with session.post(
        f"{base_url}/feedback", json={"id": reply.request_id, "score": score}, headers=headers
    ) as response:
        await response.read()
        return response.status == 200


def fake_root(api_base: str) -> str:
    """The fake upstream's root URL (its ``/fake/*`` endpoints) from its ``.../v1`` base."""
    return api_base.removesuffix("/").removesuffix("/v1")
