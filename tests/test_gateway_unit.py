"""The gateway through Litestar's test client with an in-process mock upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from litestar.testing import TestClient

from compass.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings

CHAT = "/v1/chat/completions"


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream()


@pytest.fixture
def gateway(tmp_path: Path, mock: MockUpstream) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, MOCK_POOL, **{"upstream.max_retries": 1})
    app = create_app(settings, build_services(settings, upstream=mock))
    with TestClient(app) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def rows(client: TestClient, sql: str) -> list[tuple[Any, ...]]:
    """Query the live server's history the way users do: through the read-only SQL endpoint."""
    response = client.post("/admin/api/sql", json={"sql": sql})
    assert response.status_code == 200, response.text
    return [tuple(row) for row in response.json()["rows"]]


def file_rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query the DuckDB file after the server stopped."""
    con = duckdb.connect(str(home / "compass.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_routed_answer_carries_routing_and_headers(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("hello back")
    response = gateway.post(CHAT, json={"model": "auto", "messages": user("hello")})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "hello back"
    assert body["id"].startswith("chatcmpl-") and body["model"] == "small"
    routing = body["routing"]
    assert routing["tier"] == "simple" and routing["model"] == "small"
    assert routing["method"] == "classifier+static_tier"
    assert set(routing["candidates"]) == {"small", "medium", "large"}
    assert routing["demo"] is False and routing["routing_ms"] >= 0
    assert response.headers["x-compass-model"] == "small"
    assert response.headers["x-compass-tier"] == "simple"
    assert response.headers["x-compass-cache"] == "off"
    assert float(response.headers["x-compass-routing-ms"]) >= 0


def test_virtual_models_and_omitted_model_route(gateway: TestClient) -> None:
    best = gateway.post(CHAT, json={"model": "compass/best", "messages": user("hi")}).json()
    cheap = gateway.post(CHAT, json={"model": "compass/cheap", "messages": user("x " * 3000)}).json()
    omitted = gateway.post(CHAT, json={"messages": user("hi")}).json()
    assert best["model"] == "large" and cheap["model"] == "small"
    assert omitted["routing"]["method"].endswith("static_tier")


def test_pool_model_is_passed_through(gateway: TestClient, mock: MockUpstream) -> None:
    body = gateway.post(
        CHAT, json={"model": "large", "messages": user("hi"), "temperature": 0.2, "seed": 7}
    ).json()
    assert body["model"] == "large" and body["routing"]["method"] == "user_specified"
    model, _, params = mock.history[-1]
    assert model == "large" and params == {"temperature": 0.2, "seed": 7}


def test_parameters_pass_through_unchanged(gateway: TestClient, mock: MockUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    sent = {
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "n": 1,
        "stop": ["END"],
        "seed": 3,
        "top_p": 0.5,
        "max_tokens": 20,
        "max_completion_tokens": 20,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u1",
    }
    gateway.post(CHAT, json={"model": "medium", "messages": user("hi"), **sent})
    assert mock.history[-1][2] == sent


MALFORMED: list[tuple[str, int, str | None]] = [
    ("{not json", 400, None),
    ("[]", 400, None),
    ("null", 400, None),
    ('{"model": "auto"}', 400, "messages"),
    ('{"messages": []}', 400, "messages"),
    ('{"messages": "hello"}', 400, "messages"),
    ('{"messages": [{"content": "no role"}]}', 400, "messages[0]"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    ('{"messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": 3}', 400, "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', 400, "top_p"),
    ('{"messages": [{"role": "user", "content": "x"}], "n": 0}', 400, "n"),
    ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "max_tokens"),
    ('{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
    ('{"messages": [{"role": "user", "content": "x"}], "model": "gpt-17"}', 404, "model"),
    ('{"messages": [{"role": "user", "content": "x"}], "compass": {"cost_weight": -1}}', 400, None),
]


@pytest.mark.parametrize(("body", "status", "param"), MALFORMED)
def test_malformed_bodies_get_openai_errors(
    gateway: TestClient, body: str, status: int, param: str | None
) -> None:
    response = gateway.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)
    if status == 404:
        assert error["code"] == "model_not_found"


def test_unknown_routes_and_methods_are_openai_errors(gateway: TestClient) -> None:
    assert gateway.get("/v1/nothing").json()["error"]["code"] == "not_found"
    response = gateway.get(CHAT)
    assert response.status_code == 405 and response.json()["error"]["type"] == "invalid_request_error"


def test_fallback_to_next_model_records_attempts(
    gateway: TestClient, mock: MockUpstream, tmp_path: Path
) -> None:
    mock.enqueue_error(UpstreamError("boom 1"))
    mock.enqueue_error(UpstreamError("boom 2"))  # the retry of the same model fails too
    mock.enqueue("from the fallback")
    body = gateway.post(CHAT, json={"model": "auto", "messages": user("hello")}).json()
    assert body["choices"][0]["message"]["content"] == "from the fallback"
    attempts = body["routing"]["attempts"]
    assert [a["model"] for a in attempts] == ["small", "small", "medium"]
    assert [a["status"] for a in attempts] == [502, 502, "ok"]
    assert body["model"] == "medium"
    stored = rows(gateway, f"SELECT model, attempts FROM requests WHERE id = '{body['id']}'")
    assert stored[0][0] == "medium" and len(json.loads(stored[0][1])) == 3
    failures = rows(gateway, "SELECT model, reward, source FROM rewards")
    assert failures == [("small", 0.0, "failure")]


def test_all_models_down_is_a_clean_502_or_504(
    gateway: TestClient, mock: MockUpstream, tmp_path: Path
) -> None:
    for _ in range(6):
        mock.enqueue_error(UpstreamError("down"))
    response = gateway.post(CHAT, json={"messages": user("hello")})
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    mock.enqueue_error(UpstreamTimeout("slow"))
    mock.enqueue_error(UpstreamTimeout("slow"))
    response = gateway.post(CHAT, json={"model": "small", "messages": user("hello")})
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    statuses = sorted(r[0] for r in rows(gateway, "SELECT status FROM requests"))
    assert statuses == [502, 504]


def test_upstream_bad_request_is_not_retried(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue_error(InvalidRequest("upstream says the tool schema is invalid"))
    response = gateway.post(CHAT, json={"model": "auto", "messages": user("hello")})
    assert response.status_code == 400 and "tool schema" in response.json()["error"]["message"]
    assert len(mock.history) == 1


def test_stream_has_routing_first_usage_on_request_and_done(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("one two three")
    response = gateway.post(
        CHAT, json={"messages": user("hi"), "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-compass-model"] == "small"
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "routing" in chunks[0] and all("routing" not in c for c in chunks[1:])
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == "one two three"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    mock.enqueue("no usage please")
    plain = gateway.post(CHAT, json={"messages": user("hi"), "stream": True})
    assert '"usage"' not in plain.text


def test_stream_failure_before_first_token_falls_back(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue_error(UpstreamError("first model down"))
    mock.enqueue_error(UpstreamError("still down"))
    mock.enqueue("fallback stream")
    response = gateway.post(CHAT, json={"messages": user("hi"), "stream": True})
    first = json.loads(response.text.split("data: ", 2)[1].split("\n")[0])
    assert first["model"] == "medium"
    assert [a["model"] for a in first["routing"]["attempts"]] == ["small", "small", "medium"]


def test_feedback_validation_and_replacement(gateway: TestClient, tmp_path: Path) -> None:
    chat_id = gateway.post(CHAT, json={"messages": user("hi")}).json()["id"]
    assert gateway.post("/feedback", json={"id": "chatcmpl-nope", "score": 1}).status_code == 404
    for bad in (
        {"id": chat_id, "score": 1.5},
        {"id": chat_id, "score": -0.1},
        {"id": chat_id},
        {"id": chat_id, "score": 1, "thumbs": "up"},
        {"id": chat_id, "thumbs": "sideways"},
        {"score": 1},
        {"id": chat_id, "score": 1, "extra": 1},
    ):
        response = gateway.post("/feedback", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request_error"
    first = gateway.post("/feedback", json={"id": chat_id, "thumbs": "up"}).json()
    second = gateway.post("/feedback", json={"id": chat_id, "score": 0.25, "comment": "meh"}).json()
    assert first["replaced"] == 0 and second["replaced"] == 1 and second["reward"] == 0.25
    live = rows(gateway, "SELECT reward, comment FROM rewards WHERE NOT superseded")
    assert live == [(0.25, "meh")]


def test_stats_match_rows(gateway: TestClient, mock: MockUpstream, tmp_path: Path) -> None:
    for text in ("hi", "hello", "x " * 600):
        gateway.post(CHAT, json={"messages": user(text)})
    gateway.post(CHAT, json={"model": "large", "messages": user("hi")})
    stats = gateway.get("/stats").json()
    assert stats["total_calls"] == 4
    ((count, cost),) = rows(gateway, "SELECT count(*), sum(cost_usd) FROM requests")
    assert stats["total_calls"] == count and stats["total_cost_usd"] == pytest.approx(cost)
    by_model = dict(rows(gateway, "SELECT model, count(*) FROM requests GROUP BY 1"))
    assert {k: v["calls"] for k, v in stats["by_model"].items()} == by_model
    assert stats["by_tier"]["simple"]["calls"] == 2
    page = gateway.get("/stats/raw?limit=2&offset=0").json()
    assert page["total"] == 4 and len(page["data"]) == 2
    assert page["data"][0]["created_at"] >= page["data"][1]["created_at"]
    assert gateway.get("/stats/raw?limit=0").status_code == 400


def test_admin_sql_is_read_only(gateway: TestClient) -> None:
    gateway.post(CHAT, json={"messages": user("hi")})
    ok = gateway.post("/admin/api/sql", json={"sql": "SELECT model, count(*) AS n FROM requests GROUP BY 1"})
    assert ok.json()["rows"] == [["small", 1]]
    for sql in (
        "DELETE FROM requests",
        "DROP TABLE requests",
        "SELECT 1; DELETE FROM requests",
        "INSERT INTO rewards VALUES (1)",
        "SELEKT nonsense",
    ):
        response = gateway.post("/admin/api/sql", json={"sql": sql})
        assert response.status_code == 400, sql
    assert gateway.post("/admin/api/sql", json={"sql": "SELECT count(*) FROM requests"}).json()["rows"] == [
        [1]
    ]


def test_hash_only_storage(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MOCK_POOL, **{"storage.store_content": "hash"})
    mock = MockUpstream()
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as client:
        client.post(CHAT, json={"messages": user("secret prompt")})
    ((messages, digest, content),) = file_rows(
        tmp_path, "SELECT messages, messages_hash, response_content FROM requests"
    )
    assert messages is None and len(digest) == 64 and content.startswith("sha256:")


def test_models_and_health(gateway: TestClient) -> None:
    models = gateway.get("/v1/models").json()["data"]
    ids = [m["id"] for m in models]
    assert ids[:2] == ["auto", "compass/auto"] and {"small", "medium", "large"} <= set(ids)
    health = gateway.get("/health").json()
    assert health["status"] == "ok" and health["layers"]["classifier"]["backend"] == "length"
    assert gateway.get("/docs/openapi.json").json()["info"]["title"] == "LLM Compass"


def test_route_endpoint_calls_no_model(gateway: TestClient, mock: MockUpstream) -> None:
    body = gateway.post("/v1/route", json={"messages": user("x " * 3000)}).json()
    assert body["model"] == "large" and body["tier"] == "complex" and mock.history == []
    assert body["fallbacks"] == ["medium", "small"]


def test_circuit_breaker_cools_down_a_failing_model(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, MOCK_POOL, **{"upstream.breaker_failures": 2, "upstream.breaker_cooldown_s": 60}
    )
    mock = MockUpstream()
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as client:
        for _ in range(2):  # small fails twice (once per request), medium answers as fallback
            mock.enqueue_error(UpstreamError("small is down"))
            mock.enqueue("fallback")
            assert client.post(CHAT, json={"messages": user("hi")}).json()["model"] == "medium"
        assert client.get("/health").json()["breakers"]["small"]["state"] == "open"
        calls = len(mock.history)
        body = client.post(CHAT, json={"messages": user("hi")}).json()
        assert "small" not in body["routing"]["candidates"] and body["model"] != "small"
        assert len(mock.history) == calls + 1  # no call was wasted on the open circuit


def test_metrics_count_requests_layers_and_cost(gateway: TestClient, mock: MockUpstream) -> None:
    gateway.post(CHAT, json={"messages": user("hi")})
    mock.enqueue_error(UpstreamError("down"))
    mock.enqueue_error(UpstreamError("down"))
    gateway.post(CHAT, json={"messages": user("hello")})
    text = gateway.get("/metrics").text
    assert (
        'compass_requests_total{cache="off",model="small",status="200",stream="False",tier="simple"} 1.0'
        in text
    )
    assert (
        'compass_requests_total{cache="off",model="medium",status="200",stream="False",tier="simple"} 1.0'
        in text
    )
    assert 'compass_fallbacks_total{model="medium"} 1.0' in text
    assert 'compass_upstream_errors_total{model="small",status="502"} 2.0' in text
    assert 'compass_layer_latency_seconds_count{layer="classify"} 2.0' in text
    assert 'compass_cost_usd_total{model="small"}' in text
    assert 'compass_circuit_open{model="small"} 0.0' in text


def test_a_model_named_by_layer_1_is_used_for_auto(tmp_path: Path, mock: MockUpstream) -> None:
    """RouteLLM's label -> model mapping: the named model answers, Layer 2's ranking is the fallback."""
    from layers.classifier.base import Classification, Classifier

    class NamesLarge(Classifier):
        name = "names-large"

        async def classify(self, prompt: Any) -> Classification:
            details = {"suggested_model": "large"}
            return Classification(tier="simple", score=0.1, backend=self.name, details=details)

    settings = make_settings(tmp_path, MOCK_POOL)
    services = build_services(settings, upstream=mock)
    with TestClient(create_app(settings, services)) as client:
        services.classifier = NamesLarge()
        routed = client.post("/v1/chat/completions", json={"model": "auto", "messages": user("hi")}).json()
        assert routed["routing"]["model"] == "large"
        assert routed["routing"]["method"] == "classifier+mapping"
        cheap = client.post("/v1/chat/completions", json={"model": "compass/cheap", "messages": user("hi")})
        assert cheap.json()["routing"]["model"] == "small"  # a preset keeps Layer 2's choice
