"""Conversation affinity: follow-up turns go to the model that answered the earlier ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.pipeline.affinity import history_key, reply_key
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from ops.fake_upstream import FakeUpstream, demo_config
from ops.procs import GatewayProcess
from tests.helpers import MOCK_POOL, demo_pool, make_settings

LONG = "Explain, step by step and with a worked example, how a B-tree splits a full node. " * 40


def ask(client: TestClient, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    headers = extra.pop("headers", {})
    response = client.post("/v1/chat/completions", json={"messages": messages, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def follow_up(messages: list[dict[str, Any]], body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    reply = body["choices"][0]["message"]
    return [*messages, {"role": "assistant", "content": reply["content"]}, {"role": "user", "content": text}]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, Any]]:
    settings = make_settings(tmp_path, models=MOCK_POOL, **{"selector.backend": "thompson"})
    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        yield client, services


def test_key_ignores_metadata_and_sees_content() -> None:
    messages = [{"role": "user", "content": "hi"}]
    key = reply_key("t", messages, {"content": "hello", "refusal": None})
    resent = [*messages, {"role": "assistant", "content": [{"type": "text", "text": "hello"}], "name": "x"}]
    assert history_key("t", [*resent, {"role": "user", "content": "more"}]) == key
    assert history_key("t", [*messages, {"role": "assistant", "content": "other"}]) != key
    assert history_key("other-tenant", [*resent, {"role": "user", "content": "more"}]) != key
    assert history_key("t", messages) is None  # a first turn has no conversation yet


def test_follow_up_sticks_unless_the_tier_rises(gateway: tuple[TestClient, Any]) -> None:
    client, _ = gateway
    first = [{"role": "user", "content": "hi there"}]
    body = ask(client, first, compass={"candidates": ["small"]})  # routed, and answered by small
    assert body["model"] == "small" and not body["routing"]["method"].endswith("affinity")
    short = follow_up(first, body, "and one more thing?")
    again = ask(client, short)
    assert again["model"] == "small" and again["routing"]["method"].endswith("affinity")
    harder = ask(client, follow_up(short, again, LONG))  # Layer 1: complex, above small's tier
    assert harder["routing"]["tier"] == "complex"
    assert not harder["routing"]["method"].endswith("affinity")  # Layer 2 chose afresh


def test_open_circuit_and_named_model_override_affinity(gateway: tuple[TestClient, Any]) -> None:
    client, services = gateway
    first = [{"role": "user", "content": "hello"}]
    body = ask(client, first, compass={"candidates": ["medium"]})
    turn = follow_up(first, body, "go on")
    for _ in range(services.breakers["medium"].failure_threshold):
        services.breakers["medium"].failure()
    moved = ask(client, turn)
    assert moved["model"] != "medium" and not moved["routing"]["method"].endswith("affinity")
    services.breakers["medium"].success()
    named = ask(client, turn, model="large")
    assert named["model"] == "large" and named["routing"]["method"] == "user_specified"


def test_session_header_is_a_conversation(gateway: tuple[TestClient, Any]) -> None:
    client, _ = gateway
    headers = {"x-compass-session": "s-42"}
    body = ask(client, [{"role": "user", "content": "a"}], compass={"candidates": ["large"]}, headers=headers)
    other = ask(client, [{"role": "user", "content": "unrelated"}], headers=headers)
    assert other["model"] == body["model"] == "large"
    assert other["routing"]["method"].endswith("affinity")


def test_affinity_can_be_turned_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, models=MOCK_POOL, **{"routing.affinity": False})
    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        first = [{"role": "user", "content": "hi"}]
        body = ask(client, first, compass={"candidates": ["large"]})
        again = ask(client, follow_up(first, body, "more"))
        assert not again["routing"]["method"].endswith("affinity")
        assert services.affinity is None


@pytest.mark.slow
def test_multi_turn_streams_through_the_real_gateway(tmp_path: Path) -> None:
    upstream = FakeUpstream(demo_config()).start()
    config = {
        "models": demo_pool(upstream),
        # every turn stays "simple", so no turn rises above the first model's tier
        "classifier": {
            "backend": "length",
            "options": {"simple_max_tokens": 4000, "complex_min_tokens": 8000},
        },
        "cache": {"enabled": False},
        "storage": {"flush_interval_ms": 5},
    }
    try:
        with GatewayProcess(tmp_path / "home", config) as gateway:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="local", max_retries=0)
            for conversation in range(4):
                messages: list[dict[str, Any]] = [{"role": "user", "content": f"conversation {conversation}"}]
                models, methods = [], []
                for turn in range(4):
                    text, model, method = "", None, None
                    with client.chat.completions.create(
                        model="auto", messages=messages, stream=True
                    ) as stream:  # type: ignore[call-overload]
                        for chunk in stream:
                            model = model or chunk.model
                            extra = chunk.model_extra or {}
                            method = method or (extra.get("routing") or {}).get("method")
                            if chunk.choices and chunk.choices[0].delta.content:
                                text += chunk.choices[0].delta.content
                    models.append(model)
                    methods.append(method)
                    messages += [
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": f"turn {turn}"},
                    ]
                assert len(set(models)) == 1, models
                assert not methods[0].endswith("affinity")
                assert all(m.endswith("affinity") for m in methods[1:]), methods
    finally:
        upstream.stop()
