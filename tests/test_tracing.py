"""OpenTelemetry: one span per request, children per layer and upstream attempt, GenAI attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from compass.errors import UpstreamError
from compass.http.app import create_app
from compass.services import build_services
from compass.tracing import Tracing, tracing_enabled
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[TestClient, MockUpstream, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    mock = MockUpstream()
    settings = make_settings(tmp_path, models=MOCK_POOL, **{"upstream.max_retries": 0})
    services = build_services(settings, upstream=mock)
    services.tracing = Tracing(provider)
    with TestClient(create_app(settings, services)) as client:
        yield client, mock, exporter


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_a_request_is_one_server_span_with_a_child_per_layer(traced: Any) -> None:
    client, mock, exporter = traced
    mock.enqueue("hello back")
    body = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
    ).json()
    spans = spans_by_name(exporter)
    root = spans["chat auto"]
    assert root.kind == SpanKind.SERVER and root.parent is None
    attrs = dict(root.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "auto"
    assert attrs["gen_ai.response.model"] == body["model"]
    assert attrs["gen_ai.response.id"] == body["id"]
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["compass.tier"] == body["routing"]["tier"]
    children = [s for s in exporter.get_finished_spans() if s.parent is not None]
    assert {s.parent.span_id for s in children} == {root.context.span_id}
    assert {s.context.trace_id for s in children} == {root.context.trace_id}
    assert {"compass.classify", "compass.select", f"chat {body['model']}"} <= {s.name for s in children}
    upstream = spans[f"chat {body['model']}"]
    assert upstream.kind == SpanKind.CLIENT
    assert root.start_time <= upstream.start_time <= upstream.end_time <= root.end_time


def test_a_failed_attempt_is_an_error_span_and_the_fallback_its_sibling(traced: Any) -> None:
    client, mock, exporter = traced
    mock.enqueue_error(UpstreamError("provider down"))
    mock.enqueue("from the fallback")
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    first, second = body["routing"]["attempts"][:2]
    assert first["status"] != "ok" and second["status"] == "ok"
    attempts = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert [s.name for s in attempts] == [f"chat {first['model']}", f"chat {second['model']}"]
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert attempts[0].end_time <= attempts[1].start_time


def test_tracing_is_off_without_an_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_enabled()
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    settings = make_settings(tmp_path, models=MOCK_POOL)
    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        assert client.get("/health").status_code == 200
        assert services.tracing is None


def test_an_endpoint_turns_on_the_otlp_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    settings = make_settings(tmp_path, models=MOCK_POOL)
    services = build_services(settings, upstream=MockUpstream())
    with TestClient(create_app(settings, services)) as client:
        assert client.get("/health").status_code == 200
        assert isinstance(services.tracing, Tracing)
        processors = services.tracing.provider._active_span_processor._span_processors
        assert type(processors[0]).__name__ == "BatchSpanProcessor"
