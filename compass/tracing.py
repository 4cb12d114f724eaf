"""OpenTelemetry traces: one span per request, a child per layer and per upstream attempt.

Off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set; then
spans go over OTLP/HTTP through a batch processor, off the request path. When off, nothing is
imported and a request pays one ``is None`` check.

The spans are built when the request is recorded, from the timings the exchange measured
anyway (the same ones the history row and the Prometheus histograms get), with their real start
offsets, so tracing adds no clock reads or context switches to the layers themselves. Attributes
follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``); the gateway's own decisions
are ``compass.*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
MS = 1_000_000  # nanoseconds


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


class Tracing:
    """Turns finished exchanges into spans on a ``TracerProvider``."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self.tracer = provider.get_tracer("llm-compass")
        self._kind = SpanKind
        self._status = (Status, StatusCode)

    @classmethod
    def from_environment(cls, service_name: str = "llm-compass") -> Tracing:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def _error(self, span: Any, message: str | None) -> None:
        status, code = self._status
        span.set_status(status(code.ERROR, message or "error"))

    def observe_exchange(self, row: dict[str, Any], started_ns: int, timeline: dict[str, Any]) -> None:
        """Emit the request's spans; ``timeline`` holds start offsets in ms from ``started_ns``."""
        total_ns = int((row.get("total_ms") or 0.0) * MS)
        requested = row.get("requested_model") or "auto"
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": requested,
            "compass.request.id": row["id"],
            "compass.tenant": row.get("tenant") or "",
            "compass.stream": bool(row.get("stream")),
            "compass.cache.status": row.get("cache_status") or "off",
            "http.response.status_code": int(row["status"]),
        }
        for key, name in (
            ("model", "gen_ai.response.model"),
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
            ("routing_method", "compass.routing.method"),
            ("tier", "compass.tier"),
            ("task_type", "compass.task_type"),
            ("cost_usd", "compass.cost_usd"),
            ("routing_ms", "compass.routing_ms"),
        ):
            if row.get(key) is not None:
                attrs[name] = row[key]
        if row.get("id"):
            attrs["gen_ai.response.id"] = row["id"]
        if row.get("finish_reason"):
            attrs["gen_ai.response.finish_reasons"] = [row["finish_reason"]]
        params = row.get("params") or {}
        for key in ("temperature", "top_p", "max_tokens", "seed"):
            if isinstance(params.get(key), int | float):
                attrs[f"gen_ai.request.{key}"] = params[key]
        if row.get("litellm_model"):
            attrs["gen_ai.provider.name"] = str(row["litellm_model"]).partition("/")[0]
        root = self.tracer.start_span(
            f"chat {requested}", kind=self._kind.SERVER, start_time=started_ns, attributes=attrs
        )
        if row["status"] >= 400:
            self._error(root, row.get("error"))
        from opentelemetry import trace

        parent = trace.set_span_in_context(root)
        offset = 0.0
        for layer in ("classify", "select"):
            ms = row.get(f"{layer}_ms")
            if ms is not None:
                self._child(parent, f"compass.{layer}", started_ns, offset, ms, {})
                offset += ms
        if "cache_ms" in timeline and row.get("cache_status") not in (None, "off", "bypass"):
            self._child(
                parent,
                "compass.cache",
                started_ns,
                timeline["cache_ms"],
                row.get("cache_ms") or 0.0,
                {"compass.cache.status": row.get("cache_status")},
            )
        for attempt, start_ms in zip(row.get("attempts") or [], timeline.get("attempts", []), strict=False):
            span = self._child(
                parent,
                f"chat {attempt.get('model')}",
                started_ns,
                start_ms,
                attempt.get("ms") or 0.0,
                {"gen_ai.operation.name": "chat", "gen_ai.request.model": attempt.get("model", "")},
                kind=self._kind.CLIENT,
                end=False,
            )
            if attempt.get("status") != "ok":
                span.set_attribute("error.type", str(attempt.get("status")))
                self._error(span, attempt.get("error"))
            span.end(end_time=started_ns + int((start_ms + (attempt.get("ms") or 0.0)) * MS))
        root.end(end_time=started_ns + total_ns)

    def _child(
        self,
        parent: Any,
        name: str,
        started_ns: int,
        start_ms: float,
        ms: float,
        attributes: dict[str, Any],
        kind: Any = None,
        end: bool = True,
    ) -> Any:
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=kind or self._kind.INTERNAL,
            start_time=started_ns + int(start_ms * MS),
            attributes=attributes,
        )
        if end:
            span.end(end_time=started_ns + int((start_ms + ms) * MS))
        return span
