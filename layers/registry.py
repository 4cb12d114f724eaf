"""Lazy registries: config names map to ``"module:Class"`` strings, imported on first use."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(dotted: str) -> Any:
    """Import ``"package.module:Name"`` and return ``Name``."""
    module_name, _, attr = dotted.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def resolve(registry: dict[str, str], name: str, kind: str) -> Any:
    """Return the implementation registered as ``name``; a clear error names the known ones."""
    try:
        dotted = registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None
    return load_object(dotted)
