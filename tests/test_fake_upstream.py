"""The fake upstream behaves like an OpenAI server, since every end-to-end test leans on it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from ops.fake_upstream import FakeModelBehaviour, FakeUpstream, FakeUpstreamConfig, spawn_fake_upstream


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    config = FakeUpstreamConfig(
        models={"m": FakeModelBehaviour(latency_ms=0), "other": FakeModelBehaviour(latency_ms=0)}
    )
    with FakeUpstream(config) as server:
        yield server


@pytest.fixture(scope="module")
def client(fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_same_prompt_same_answer_and_usage(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="m", messages=ask("why is the sky blue"))
    second = client.chat.completions.create(model="m", messages=ask("why is the sky blue"))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens == len(
        first.choices[0].message.content.split()
    )


def test_limits_stop_n_json_logprobs(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="m", messages=ask("long please"), max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    full = client.chat.completions.create(model="m", messages=ask("cut me")).choices[0].message.content
    stop_word = full.split()[4]
    stopped = client.chat.completions.create(model="m", messages=ask("cut me"), stop=[stop_word])
    assert stop_word not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"
    several = client.chat.completions.create(model="m", messages=ask("three"), n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    as_json = client.chat.completions.create(
        model="m", messages=ask("json"), response_format={"type": "json_object"}
    )
    assert "answer" in json.loads(as_json.choices[0].message.content)
    scored = client.chat.completions.create(model="m", messages=ask("lp"), logprobs=True, top_logprobs=2)
    tokens = scored.choices[0].logprobs.content
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)


def test_directives_force_errors_for_one_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=ask("x [[fake:error=429]]"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=ask("x [[fake:error=503@m]]"))
    fine = client.chat.completions.create(model="other", messages=ask("x [[fake:error=503@m]]"))
    assert fine.choices[0].message.content
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=ask("[[fake:hang=2]]"))


def test_broken_stream_and_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="m", messages=ask("go [[fake:stream_error]]"), stream=True
        ):
            pass
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ask("hi"))


def test_behaviour_changes_at_run_time_and_history(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.reset()
    fake.configure("other", error_rate=1.0, error_status=500)
    try:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="other", messages=ask("hi"))
    finally:
        fake.configure("other", error_rate=0.0)
    assert [body["model"] for body in fake.history] == ["other"]
    grade = httpx.post(
        fake.url.removesuffix("/v1") + "/fake/grade", json={"model": "m", "prompt": "hi"}
    ).json()
    assert grade["score"] in (0.0, 1.0)


def test_child_process_serves_and_terminates() -> None:
    spawned = spawn_fake_upstream(FakeUpstreamConfig(models={"m": FakeModelBehaviour(latency_ms=0)}))
    try:
        models = httpx.get(spawned.url + "/models").json()
        assert [m["id"] for m in models["data"]] == ["m"]
    finally:
        spawned.terminate()
    assert spawned.process.poll() is not None
