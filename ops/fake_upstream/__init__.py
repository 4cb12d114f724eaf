"""The fake upstream for tests and benchmarks: the demo upstream plus test-only knobs.

The server itself is product code (``compass.upstream.demo``: it serves the demo pool); what only
tests and benchmarks need, such as models that answer instantly, lives here.
"""

from compass.upstream.demo import (
    FakeModelBehaviour,
    FakeUpstream,
    FakeUpstreamConfig,
    SpawnedFakeUpstream,
    demo_config,
    spawn_fake_upstream,
)

__all__ = [
    "FakeModelBehaviour",
    "FakeUpstream",
    "FakeUpstreamConfig",
    "SpawnedFakeUpstream",
    "demo_config",
    "instant_config",
    "spawn_fake_upstream",
]


def instant_config(*names: str) -> FakeUpstreamConfig:
    """Models that answer at once: for benchmarks that measure the gateway, not the model."""
    behaviour = FakeModelBehaviour(latency_ms=0.0, tokens_per_s=0.0)
    return FakeUpstreamConfig(models={name: behaviour for name in names})
