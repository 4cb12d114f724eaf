"""Per-model circuit breakers: a model that keeps failing is cooled down instead of retried.

Closed → (``failure_threshold`` consecutive failures) → open for ``cooldown_s`` → half-open:
one request is let through; success closes the circuit, failure opens it again. Open models
are taken out of the candidates before Layer 2 chooses, unless every model is open.
"""

from __future__ import annotations

import time
from typing import Any


class CircuitBreaker:
    __slots__ = ("cooldown_s", "failure_threshold", "failures", "opened_at", "probing", "trips")

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.trips = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allows(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            return True
        return False

    def before_call(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            if self.opened_at is None or self.state == "half_open":
                self.trips += 1
            self.opened_at = time.monotonic()
            self.probing = False


class Breakers:
    """One breaker per model name, created on first use."""

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._by_model: dict[str, CircuitBreaker] = {}

    def __getitem__(self, model: str) -> CircuitBreaker:
        breaker = self._by_model.get(model)
        if breaker is None:
            breaker = self._by_model[model] = CircuitBreaker(self.failure_threshold, self.cooldown_s)
        return breaker

    def available(self, names: list[str]) -> list[str]:
        return [name for name in names if self[name].allows()]

    def snapshot(self) -> dict[str, Any]:
        return {
            name: {"state": b.state, "consecutive_failures": b.failures, "trips": b.trips}
            for name, b in sorted(self._by_model.items())
        }
