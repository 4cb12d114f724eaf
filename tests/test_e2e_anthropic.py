"""End to end: the real ``anthropic`` SDK → /v1/messages on a real gateway process → the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.storage.db import Database
from compass.storage.keys import create_key
from compass.upstream.mock import MockUpstream
from ops.fake_upstream import FakeUpstream, demo_config
from ops.procs import GatewayProcess
from tests.helpers import MOCK_POOL, make_settings
from tests.test_e2e_openai import pool_for

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    upstream = FakeUpstream(demo_config()).start()
    home = tmp_path_factory.mktemp("anthropic")
    config = {"models": pool_for(upstream), "storage": {"flush_interval_ms": 5}}
    try:
        with GatewayProcess(home, config) as process:
            yield process
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="local-mode", max_retries=0)


def test_plain_message_is_routed_recorded_and_rateable(
    client: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    message = client.messages.create(
        model="auto",
        max_tokens=64,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": "Name a colour."}],
        metadata={"user_id": "u-1"},
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.model in {"demo-small", "demo-medium", "demo-large"}
    assert (message.model_extra or {})["routing"]["model"] == message.model
    feedback = httpx.post(f"{gateway.url}/feedback", json={"id": message.id, "thumbs": "up"}, timeout=10)
    assert feedback.status_code == 200, feedback.text
    rows = gateway.sql("SELECT model, params FROM requests ORDER BY created_at DESC LIMIT 1")
    assert rows[0][0] == message.model and '"user":"u-1"' in rows[0][1].replace(" ", "")


def test_streams_in_anthropics_event_order(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="auto", max_tokens=64, messages=[{"role": "user", "content": "Count to three."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    raw = client.messages.create(
        model="auto", max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hello there."}]
    )
    kinds = [event.type for event in raw]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(model="auto", max_tokens=128, tools=[WEATHER], messages=[question])
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    answer = client.messages.create(
        model="auto",
        max_tokens=128,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=[
            question,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}],
            },
        ],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    with client.messages.stream(model="auto", max_tokens=128, tools=[WEATHER], messages=[question]) as stream:
        streamed = stream.get_final_message()
    tool = next(block for block in streamed.content if block.type == "tool_use")
    assert streamed.stop_reason == "tool_use" and tool.name == "get_weather" and "city" in tool.input


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model="auto", messages=[{"role": "user", "content": "hi"}])
    long = client.messages.count_tokens(model="auto", messages=[{"role": "user", "content": "hello " * 200}])
    assert 0 < short.input_tokens < long.input_tokens


def test_errors_are_anthropic_errors(client: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing_model:
        client.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert missing_model.value.body["type"] == "error"
    assert missing_model.value.body["error"]["type"] == "not_found_error"
    no_max = httpx.post(
        f"{gateway.url}/v1/messages", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    )
    assert no_max.status_code == 400
    assert no_max.json()["type"] == "error" and no_max.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in no_max.json()["error"]["message"]
    for body in (b"{not json", b'{"model": "auto", "max_tokens": 8, "messages": []}', b"[]"):
        response = httpx.post(
            f"{gateway.url}/v1/messages", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    bad_block = {"role": "user", "content": [{"type": "hologram"}]}
    with pytest.raises(anthropic.BadRequestError) as unsupported:
        client.messages.create(model="auto", max_tokens=8, messages=[bad_block])
    assert "hologram" in unsupported.value.body["error"]["message"]
    chat_error = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json")
    assert "type" not in chat_error.json() and chat_error.json()["error"]["type"] == "invalid_request_error"


def test_x_api_key_is_a_client_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MOCK_POOL, **{"security.admin_key": "adm-secret-admin-key-1234567890"})
    db = Database(settings.database_path)
    db.open()
    key, _ = db.run_sync(create_key, "acme")
    db.close()
    mock = MockUpstream()
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as http:
        body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        refused = http.post("/v1/messages", json=body, headers={"x-api-key": "cmp-wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        mock.enqueue("hello")
        accepted = http.post(
            "/v1/messages", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
        )
        assert accepted.status_code == 200 and accepted.json()["content"][0]["text"] == "hello"
