"""What each fake model does: latency, streaming speed, and failures on demand."""

from __future__ import annotations

import msgspec


class FakeModelBehaviour(msgspec.Struct, kw_only=True):
    """One fake model's behaviour. Rates are probabilities per request, drawn independently.

    ``quality`` is the probability that ``/fake/grade`` calls this model's answer good, so load
    tests and demos can send realistic ``/feedback`` without a human in the loop.
    """

    latency_ms: float = 20.0  # before the first token
    tokens_per_s: float = 0.0  # streaming / generation speed; 0 = instant
    completion_tokens: int = 48  # typical answer length (varies a little per prompt)
    error_rate: float = 0.0  # answer a 5xx
    error_status: int = 503
    timeout_rate: float = 0.0  # hang for ``hang_s`` before answering
    hang_s: float = 30.0
    stream_error_rate: float = 0.0  # break a stream after a few chunks
    quality: float = 0.7


class FakeUpstreamConfig(msgspec.Struct, kw_only=True):
    models: dict[str, FakeModelBehaviour] = {}
    # Unknown model names: 404 model_not_found like OpenAI, or serve them with the default behaviour.
    accept_any_model: bool = False
    seed: int | None = None


def demo_config() -> FakeUpstreamConfig:
    """The demo pool: small is fast and weaker, large is slow and strong (prices live in compass.config)."""
    return FakeUpstreamConfig(
        models={
            "demo-small": FakeModelBehaviour(
                latency_ms=40, tokens_per_s=400, completion_tokens=40, quality=0.55
            ),
            "demo-medium": FakeModelBehaviour(
                latency_ms=80, tokens_per_s=250, completion_tokens=60, quality=0.75
            ),
            "demo-large": FakeModelBehaviour(
                latency_ms=150, tokens_per_s=120, completion_tokens=80, quality=0.9
            ),
        }
    )
