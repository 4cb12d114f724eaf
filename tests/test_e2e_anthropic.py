"""End to end: the real ``anthropic`` SDK → the gateway (a real process on loopback) → the fake upstream.

The fake upstream speaks only chat completions; the gateway translates the Messages API onto it.
The gateway has an admin key, so keys are checked: the SDK sends its key as ``x-api-key``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from ops.fake_upstream import FakeUpstream
from ops.procs import GatewayProcess
from tests.helpers import DEMO_PRICES, demo_pool

ADMIN = "sk-compass-admin-anthropic-test"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    storage = {"flush_interval_ms": 5, "store_content": "full"}
    config = {"models": demo_pool(upstream), "storage": storage, "security": {"admin_key": ADMIN}}
    with GatewayProcess(tmp_path_factory.mktemp("e2e-anthropic"), config) as process:
        yield process


def sql(gateway: GatewayProcess, query: str) -> list[list[object]]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    response = httpx.post(f"{gateway.url}/admin/api/sql", json={"sql": query}, headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["rows"]


@pytest.fixture(scope="module")
def client_key(gateway: GatewayProcess) -> str:
    created = httpx.post(
        f"{gateway.url}/admin/api/keys",
        json={"tenant": "claude-apps"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert created.status_code == 201, created.text
    return created.json()["key"]


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess, client_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=client_key, max_retries=0)


def test_plain_message_is_routed_and_recorded(client: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=200,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": "hello there"}],
        metadata={"user_id": "user-42"},
        stop_sequences=["\n\n\n"],
        extra_body={"temperature": 0.2, "top_k": 5},  # this SDK's create() no longer declares them
    )
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model in DEMO_PRICES and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    routing = (message.model_extra or {})["routing"]
    assert routing["model"] == message.model and routing["tier"] in {"simple", "medium", "complex"}
    assert (
        raw.headers["x-compass-model"] == message.model and raw.headers["x-compass-request-id"] == message.id
    )
    rows = sql(gateway, f"SELECT model, status, tenant, cost_usd FROM requests WHERE id = '{message.id}'")
    assert rows[0][:3] == [message.model, 200, "claude-apps"] and rows[0][3] > 0


def test_pinned_pool_model_and_feedback_by_message_id(
    client: anthropic.Anthropic, client_key: str, gateway: GatewayProcess
) -> None:
    message = client.messages.create(
        model="demo-large", max_tokens=50, messages=[{"role": "user", "content": "pin me to the large model"}]
    )
    assert message.model == "demo-large"
    rated = httpx.post(
        f"{gateway.url}/feedback", json={"id": message.id, "thumbs": "up"}, headers={"x-api-key": client_key}
    )
    assert rated.status_code == 200, rated.text


def test_max_tokens_cut_is_max_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="auto", max_tokens=1, messages=[{"role": "user", "content": "write a long essay about rivers"}]
    )
    assert message.stop_reason == "max_tokens"


def test_stream_helper_gives_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=200,
        messages=[{"role": "user", "content": "stream a short poem"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.id.startswith("msg_") and final.model in DEMO_PRICES
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_create_stream_true_event_sequence(client: anthropic.Anthropic) -> None:
    events = list(
        client.messages.create(
            model="auto", max_tokens=100, stream=True, messages=[{"role": "user", "content": "count to five"}]
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.delta.type == "text_delta" for d in deltas)
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0
    assert (events[0].message.model_extra or {})["routing"]["model"] == events[0].message.model


def test_tool_use_round_trip(client: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(
        model="auto", max_tokens=200, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
        messages=question,
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.id
    follow_up = [
        *question,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}],
        },
    ]
    second = client.messages.create(model="auto", max_tokens=200, tools=[WEATHER], messages=follow_up)
    assert second.stop_reason in {"end_turn", "tool_use"} and second.content
    # the upstream saw a chat conversation: the assistant's tool call, then the tool's answer
    stored = sql(gateway, f"SELECT messages FROM requests WHERE id = '{second.id}'")[0][0]
    roles = [m["role"] for m in (json.loads(stored) if isinstance(stored, str) else stored)]
    assert roles[-2:] == ["assistant", "tool"]

    with client.messages.stream(
        model="auto", max_tokens=200, tools=[WEATHER], tool_choice={"type": "any"}, messages=question
    ) as stream:
        final = stream.get_final_message()
    streamed = next(block for block in final.content if block.type == "tool_use")
    assert (
        final.stop_reason == "tool_use"
        and streamed.name == "get_weather"
        and isinstance(streamed.input, dict)
    )


def test_image_block_passes_through_as_image_url(client: anthropic.Anthropic) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    message = client.messages.create(
        model="auto",
        max_tokens=1024,  # room for any demo model's answer: the point is the image, not the length
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
            {"type": "text", "text": "What is in this image?"},
        ]}],
    )  # fmt: skip
    assert message.content and message.stop_reason == "end_turn"


def test_count_tokens(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-compass-token-counter"] == "litellm"  # tiktoken's encodings via LiteLLM, offline
    short = raw.parse()
    long = client.messages.count_tokens(
        model="demo-small", system="be brief", tools=[WEATHER],
        messages=[{"role": "user", "content": "tell me about the weather " * 20}],
    )  # fmt: skip
    assert 0 < short.input_tokens < long.input_tokens


def test_missing_max_tokens_is_bad_request(gateway: GatewayProcess, client_key: str) -> None:
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=client_key, max_retries=0)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.BadRequestError) as caught:  # create() itself checks max_tokens: post raw
        sdk.post("/v1/messages", body=body, cast_to=anthropic.types.Message)
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_bad_key_is_authentication_error(gateway: GatewayProcess) -> None:
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="gpt-nonexistent", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"model": "auto", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "auto", "max_tokens": 5, "messages": []}',
        b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]}',
        b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}',
        b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
        b'{"model": "auto", "max_tokens": 5, "tool_choice": {"type": "sometimes"},'
        b' "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "auto", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "w"}],'
        b' "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "auto", "max_tokens": 5, "temperature": 1.5,'
        b' "messages": [{"role": "user", "content": "hi"}]}',
    ],
)
def test_malformed_bodies_are_400_in_anthropic_shape(
    gateway: GatewayProcess, client_key: str, body: bytes
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(
            f"{gateway.url}{path}",
            content=body,
            headers={"x-api-key": client_key, "content-type": "application/json"},
        )
        if path.endswith("count_tokens") and (b'max_tokens": 0' in body or b"temperature" in body):
            continue  # count_tokens takes neither max_tokens nor temperature, so the body is fine there
        assert response.status_code == 400, (path, body, response.text)
        error = response.json()
        assert (
            error["type"] == "error"
            and error["error"]["type"] == "invalid_request_error"
            and error["error"]["message"]
        )


def test_chat_errors_keep_openai_shape(gateway: GatewayProcess) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"x-api-key": "sk-wrong"})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_cache_hit_answers_both_ways(client: anthropic.Anthropic) -> None:
    ask = {
        "model": "auto",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Name the capital of Peru."}],
    }
    first = client.messages.with_raw_response.create(**ask)
    for _ in range(50):  # the store runs in the background, after the answer is sent
        again = client.messages.with_raw_response.create(**ask)
        if again.headers["x-compass-cache"] == "exact":
            break
        time.sleep(0.1)
    assert first.headers["x-compass-cache"] == "miss" and again.headers["x-compass-cache"] == "exact"
    assert again.parse().content[0].text == first.parse().content[0].text
    with client.messages.stream(**ask) as stream:  # replayed from the cache as Anthropic events
        assert stream.response.headers["x-compass-cache"] == "exact"
        final = stream.get_final_message()
    assert final.content[0].text == first.parse().content[0].text and final.stop_reason == "end_turn"


def test_upstream_failure_is_api_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "[[fake:error=500]] hi"}]
        )
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"


def test_mid_stream_failure_is_an_error_event(gateway: GatewayProcess, client_key: str) -> None:
    body = {
        "model": "demo-small",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "[[fake:stream_error]] tell me a story"}],
    }
    response = httpx.post(
        f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": client_key}, timeout=30
    )
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    last = json.loads([line[6:] for line in response.text.splitlines() if line.startswith("data: ")][-1])
    assert last["type"] == "error" and last["error"]["type"] == "api_error" and last["error"]["message"]
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=client_key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError):  # the SDK raises on the error event
        for _ in sdk.messages.create(**body):
            pass


def test_openapi_lists_the_messages_operations(gateway: GatewayProcess) -> None:
    paths = httpx.get(f"{gateway.url}/docs/openapi.json").json()["paths"]  # so schemathesis fuzzes them
    assert "post" in paths["/v1/messages"] and "post" in paths["/v1/messages/count_tokens"]


def test_stats_and_metrics_count_messages(
    client: anthropic.Anthropic, client_key: str, gateway: GatewayProcess
) -> None:
    before = httpx.get(f"{gateway.url}/stats", headers={"x-api-key": client_key}).json()["total_calls"]
    message = client.messages.create(
        model="demo-medium", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    after = httpx.get(f"{gateway.url}/stats", headers={"x-api-key": client_key}).json()["total_calls"]
    assert after == before + 1  # this tenant's stats, from the same history rows as chat
    metrics = httpx.get(f"{gateway.url}/metrics").text.splitlines()
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics
        if line.startswith("compass_requests_total{") and f'model="{message.model}"' in line
    ]
    assert sum(counted) >= 1
