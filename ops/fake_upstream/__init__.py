"""A fake OpenAI-compatible LLM server: the one stand-in the tests, benchmarks and demo use.

Latency, streaming speed, errors, timeouts and broken streams on demand, per model, from
``FakeModelBehaviour`` or from ``[[fake:...]]`` directives in a prompt (see ``answers``).
"""

from ops.fake_upstream.config import FakeModelBehaviour, FakeUpstreamConfig, demo_config, instant_config
from ops.fake_upstream.runner import FakeUpstream, SpawnedFakeUpstream, spawn_fake_upstream

__all__ = [
    "FakeModelBehaviour",
    "FakeUpstream",
    "FakeUpstreamConfig",
    "SpawnedFakeUpstream",
    "demo_config",
    "instant_config",
    "spawn_fake_upstream",
]
