"""The demo upstream: a fake OpenAI-compatible LLM server behind the demo pool.

It is product code because it serves the default a newcomer starts with (no provider key);
the tests, benchmarks and fault harnesses use it too, through ``ops.fake_upstream``.

Latency, streaming speed, errors, timeouts and broken streams on demand, per model, from
``FakeModelBehaviour`` or from ``[[fake:...]]`` directives in a prompt (see ``answers``).
"""

from compass.upstream.demo.config import FakeModelBehaviour, FakeUpstreamConfig, demo_config
from compass.upstream.demo.runner import FakeUpstream, SpawnedFakeUpstream, spawn_fake_upstream

__all__ = [
    "FakeModelBehaviour",
    "FakeUpstream",
    "FakeUpstreamConfig",
    "SpawnedFakeUpstream",
    "demo_config",
    "spawn_fake_upstream",
]
