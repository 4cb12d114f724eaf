"""Shared test helpers: settings for a throwaway home, a small mock pool, free ports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compass.config import Settings, load_settings
from ops.ports import free_port  # noqa: F401 - re-exported for tests

MOCK_POOL: list[dict[str, Any]] = [
    {
        "name": "small",
        "litellm_model": "openai/small",
        "tier": "simple",
        "input_price_per_mtok": 0.1,
        "output_price_per_mtok": 0.4,
    },
    {
        "name": "medium",
        "litellm_model": "openai/medium",
        "tier": "medium",
        "input_price_per_mtok": 1.0,
        "output_price_per_mtok": 4.0,
    },
    {
        "name": "large",
        "litellm_model": "openai/large",
        "tier": "complex",
        "input_price_per_mtok": 10.0,
        "output_price_per_mtok": 40.0,
    },
]


# The fake upstream's demo models (ops/fake_upstream): (input, output price per Mtok, tier).
DEMO_PRICES: dict[str, tuple[float, float, str]] = {
    "demo-small": (0.1, 0.4, "simple"),
    "demo-medium": (1.0, 4.0, "medium"),
    "demo-large": (10.0, 40.0, "complex"),
}


def demo_pool(upstream: Any) -> list[dict[str, Any]]:
    """The demo models as a gateway pool pointed at a running fake upstream (``upstream.url``)."""
    return [
        {
            "name": name,
            "litellm_model": f"openai/{name}",
            "api_base": upstream.url,
            "api_key": "k",
            "input_price_per_mtok": p_in,
            "output_price_per_mtok": p_out,
            "tier": tier,
        }
        for name, (p_in, p_out, tier) in DEMO_PRICES.items()
    ]


def make_settings(home: Path, models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": str(home),
        "classifier.backend": "length",
        "selector.backend": "static",  # deterministic; Thompson has its own tests
        "cache.enabled": False,
        "storage.flush_interval_ms": 5,
        "upstream.max_retries": 0,
    }
    if models is not None:
        values["models"] = models
    values.update(overrides)
    return load_settings(None, environ={}, overrides=values)


def posteriors(
    client: Any, headers: dict[str, str] | None = None
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Layer 2's posteriors as ``/admin/api/bandit`` shows them: context → model → (alpha, beta, pulls)."""
    snapshot = client.get("/admin/api/bandit", headers=headers or {}).json()
    return {
        context: {name: (m["alpha"], m["beta"], m["pulls"]) for name, m in models.items()}
        for context, models in snapshot["contexts"].items()
    }


def wait_for(check: Any, timeout_s: float = 20.0) -> bool:
    """Poll ``check()`` until it is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
