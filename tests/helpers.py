"""Shared test helpers: settings for a throwaway home, a small mock pool, free ports."""

from __future__ import annotations

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
