"""End to end: the real ``openai`` SDK → the gateway (a real process on loopback) → the fake upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ops.fake_upstream import FakeUpstream
from ops.procs import GatewayProcess
from tests.helpers import demo_pool


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("e2e")
    with GatewayProcess(
        home, {"models": demo_pool(upstream), "storage": {"flush_interval_ms": 5}}
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused-in-local-mode", max_retries=0)


def routing_of(completion: object) -> dict:
    extra = completion.model_extra or {}  # type: ignore[attr-defined]
    return extra["routing"]


def test_non_stream_is_routed_and_recorded(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    completion = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content
    assert completion.model in {"demo-small", "demo-medium", "demo-large"}
    routing = routing_of(completion)
    assert routing["model"] == completion.model and routing["tier"] in {"simple", "medium", "complex"}
    assert completion.usage is not None and completion.usage.total_tokens > 0
    rows = gateway.sql(f"SELECT model, status, cost_usd FROM requests WHERE id = '{completion.id}'")
    assert rows == [[completion.model, 200, pytest.approx(rows[0][2])]] and rows[0][2] > 0


def test_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "headers please"}]
    )
    completion = raw.parse()
    assert raw.headers["x-compass-model"] == completion.model
    assert raw.headers["x-compass-tier"] in {"simple", "medium", "complex"}
    assert raw.headers["x-compass-cache"]
    assert float(raw.headers["x-compass-routing-ms"]) >= 0


def test_stream_with_usage(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert (chunks[0].model_extra or {}).get("routing", {}).get("model") == chunks[0].model
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and chunks[-1].choices == []
    rows = gateway.sql(
        f"SELECT stream, completion_tokens, response_content FROM requests WHERE id = '{chunks[0].id}'"
    )
    assert rows[0][0] is True and rows[0][1] == usage.completion_tokens and rows[0][2] == text


def test_tool_calls_pass_through(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    completion = client.chat.completions.create(
        model="auto", messages=messages, tools=tools, tool_choice="auto"
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    assert completion.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(model="auto", messages=messages, tools=tools, stream=True)
    names, arguments = set(), ""
    for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function and delta_call.function.name:
                names.add(delta_call.function.name)
            if delta_call.function and delta_call.function.arguments:
                arguments += delta_call.function.arguments
    assert names == {"get_weather"} and isinstance(json.loads(arguments), dict)


def test_pool_model_and_unknown_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="demo-large", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "demo-large" and routing_of(completion)["method"] == "user_specified"
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "hi"}])
    assert excinfo.value.code == "model_not_found"


def test_openai_parameters_reach_the_upstream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="demo-medium",
        messages=[{"role": "user", "content": "params"}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=12,
        stop=["zzz"],
        seed=11,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        user="end-user-1",
        response_format={"type": "json_object"},
        n=1,
    )
    received = upstream.history[-1]
    for key, value in {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 12,
        "stop": ["zzz"],
        "seed": 11,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "user": "end-user-1",
        "response_format": {"type": "json_object"},
    }.items():
        assert received[key] == value, key


def test_bad_requests_are_openai_errors(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="auto", messages=[], temperature=0.5)
    assert excinfo.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], temperature=7
        )
    for body in (b"{oops", b'{"messages": [{"role": "user"}], "n": "two"}', b"\xff\xfe"):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and set(response.json()["error"]) >= {"message", "type", "code"}


MALFORMED_BODIES: list[bytes] = [
    b"{oops",
    b"\xff\xfe",
    b"[]",
    b"null",
    b"{}",
    b'{"messages": "hello"}',
    b'{"messages": [{"role": "user"}], "n": "two"}',
    b'{"messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"messages": [{"role": "user", "content": 42}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "compass": {"cost_weight": "max"}}',
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
def test_malformed_bodies_get_openai_4xx(gateway: GatewayProcess, body: bytes) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error) and error["message"]


def test_stats_match_the_rows(gateway: GatewayProcess) -> None:
    stats = httpx.get(f"{gateway.url}/stats").json()
    ((count, cost),) = gateway.sql("SELECT count(*), coalesce(sum(cost_usd), 0) FROM requests")
    assert stats["total_calls"] == count and stats["total_cost_usd"] == pytest.approx(cost)
    per_model = {
        m: n for m, n in gateway.sql("SELECT coalesce(model, 'none'), count(*) FROM requests GROUP BY 1")
    }
    assert {k: v["calls"] for k, v in stats["by_model"].items()} == per_model


def test_demo_mode_without_keys(tmp_path: Path) -> None:
    """No provider key and no models: the demo pool, clearly marked, still routes."""
    with GatewayProcess(tmp_path / "demo", {}) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
        models = client.models.list().data
        demo = [m for m in models if (m.model_extra or {}).get("compass", {}).get("demo")]
        assert {m.id for m in demo} >= {"demo-small", "demo-medium", "demo-large"}
        completion = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert routing_of(completion)["demo"] is True and completion.choices[0].message.content
        assert httpx.get(f"{gateway.url}/health").json()["demo"] is True
    assert "DEMO MODE" in gateway.log()
