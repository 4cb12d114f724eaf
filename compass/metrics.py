"""Prometheus metrics (prometheus-client): one registry per app, recorded once per request.

prometheus-client rather than hand-written exposition: correct escaping, histogram buckets and
the text format for free, and it is the library every Prometheus user already knows.
"""

from __future__ import annotations

from typing import Any, Protocol


class LiveSources(Protocol):
    """What the scrape-time gauges read (``Services`` is one); metrics never imports it."""

    selector: Any
    breakers: Any
    history: Any


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LAYERS = ("classify", "select", "cache", "upstream", "routing", "total")


class Metrics:
    def __init__(self, services: LiveSources) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.services = services
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "compass_requests",
            "Chat requests handled",
            ["model", "tier", "status", "cache", "stream"],
            registry=r,
        )
        self.latency = Histogram(
            "compass_layer_latency_seconds",
            "Time spent per layer",
            ["layer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("compass_tokens", "Tokens by model", ["model", "kind"], registry=r)
        self.cost = Counter("compass_cost_usd", "Upstream cost in USD by model", ["model"], registry=r)
        self.cache_events = Counter(
            "compass_cache_events", "Cache lookups by outcome", ["status"], registry=r
        )
        self.selections = Counter(
            "compass_bandit_selections", "Layer 2 choices", ["context", "model", "method"], registry=r
        )
        self.upstream_errors = Counter(
            "compass_upstream_errors", "Failed upstream attempts", ["model", "status"], registry=r
        )
        self.fallbacks = Counter(
            "compass_fallbacks", "Requests answered by a fallback model", ["model"], registry=r
        )
        self.feedback = Counter("compass_feedback", "Feedback received", ["context", "model"], registry=r)
        r.register(_LiveCollector(services))

    def observe_exchange(self, row: dict[str, Any]) -> None:
        """Everything about one finished request, from its history row."""
        model = row.get("model") or "none"
        cache = row.get("cache_status") or "off"
        self.requests.labels(
            model, row.get("tier") or "none", str(row["status"]), cache, str(row["stream"])
        ).inc()
        for layer in ("classify", "select", "cache", "upstream", "routing", "total"):
            value = row.get(f"{layer}_ms")
            if value is not None:
                self.latency.labels(layer).observe(value / 1000.0)
        for kind in ("prompt", "completion"):
            count = row.get(f"{kind}_tokens")
            if count:
                self.tokens.labels(model, kind).inc(count)
        if row.get("cost_usd"):
            self.cost.labels(model).inc(row["cost_usd"])
        if cache != "off":
            self.cache_events.labels(cache).inc()
        if row.get("context"):
            method = (row.get("routing_method") or "").rsplit("+", 1)[-1]
            self.selections.labels(row["context"], model, method).inc()
        attempts = row.get("attempts") or []
        for attempt in attempts:
            if attempt.get("status") != "ok":
                self.upstream_errors.labels(attempt.get("model", "?"), str(attempt.get("status"))).inc()
        if attempts and attempts[0].get("status") != "ok" and row["status"] < 400:
            self.fallbacks.labels(model).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read at scrape time: posterior means, circuit states, history queue depth."""

    def __init__(self, services: LiveSources) -> None:
        self.services = services

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        means = GaugeMetricFamily(
            "compass_bandit_posterior_mean", "Layer 2 posterior mean quality", labels=["context", "model"]
        )
        selector = self.services.selector
        if selector is not None:
            for context, models in (selector.snapshot().get("contexts") or {}).items():
                for model, stats in models.items():
                    if isinstance(stats, dict) and "mean" in stats:
                        means.add_metric([context, model], float(stats["mean"]))
        yield means
        breakers = GaugeMetricFamily(
            "compass_circuit_open", "1 while a model's circuit is open", labels=["model"]
        )
        for model, state in self.services.breakers.snapshot().items():
            breakers.add_metric([model], 1.0 if state["state"] == "open" else 0.0)
        yield breakers
        pending = GaugeMetricFamily("compass_history_pending", "History rows waiting to be written")
        history = self.services.history
        pending.add_metric([], float(history.pending if history else 0))
        yield pending
