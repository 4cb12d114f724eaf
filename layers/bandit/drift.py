"""How far each model's live rewards have moved from what its train rows predict (Layer 2).

Train rows (benchmark grades, ``prior_weight`` x16) make the neighbourhood posterior as sharp as a
kNN router's, and that is also why a provider regression hides behind them: sixteen benchmark
observations per row outvote the live zeros for thousands of requests. The guard keeps, per
model, recency-weighted sums of the residual ``e = mu_train(x) - r`` between the model's train-row
mean at the request's prompt and the reward it got there. ``mu_train`` depends only on the static
train memory and the prompt, and the sums decay with event time like the Thompson sums (a weight
``2^((ts - t_ref)/half_life)``), so the state is an order-independent fold: ``forget`` subtracts
exactly, ``rebuild`` reproduces it.

The shift: where the recent mean residual ``d`` exceeds ``tolerance`` plus ``z`` standard errors,
the model's train evidence is moved by ``sign(d)·(|d| - tolerance - z·se)`` in every neighbourhood
("the benchmark said 0.8 here; this model now scores 0.4 below its benchmark on its recent
requests"). Within the tolerance nothing changes, so on traffic like the benchmark the selector
decides exactly as without the guard.
"""

from __future__ import annotations

import math

import numpy as np

# Rescale the decay reference once the newest event is this many half-lives past it.
_RESCALE_HALF_LIVES = 256.0


class DriftGuard:
    """Per-slot recency-weighted residual sums and the train-evidence shift they imply."""

    def __init__(self, tolerance: float, z: float, half_life: float, min_events: float) -> None:
        self.tolerance = float(tolerance)
        self.z = float(z)
        self.half_life = float(half_life)
        self.min_events = float(min_events)
        self.reset()

    def reset(self) -> None:
        self.s = np.zeros(0)  # Σ w·e
        self.q = np.zeros(0)  # Σ w·e²
        self.n = np.zeros(0)  # Σ w
        self.last = np.zeros(0)  # newest event ts per slot (forget does not roll it back)
        self.shift = np.zeros(0)
        self.active = False  # any shift non-zero: the decision path multiplies only then
        self._t_ref: float | None = None

    def _grow(self, size: int) -> None:
        extra = size - len(self.s)
        if extra > 0:
            pad = np.zeros(extra)
            self.s, self.q, self.n = (np.concatenate([a, pad]) for a in (self.s, self.q, self.n))
            self.shift = np.concatenate([self.shift, pad])
            self.last = np.concatenate([self.last, np.full(extra, -math.inf)])

    def _w(self, ts: float) -> float:
        if self._t_ref is None:
            self._t_ref = ts
        elif (ts - self._t_ref) / self.half_life > _RESCALE_HALF_LIVES:
            scale = 2.0 ** ((self._t_ref - ts) / self.half_life)
            self.s *= scale
            self.q *= scale
            self.n *= scale
            self._t_ref = ts
        return 2.0 ** ((ts - self._t_ref) / self.half_life)

    def add(self, slot: int, residual: float, ts: float, weight: float, slots: int) -> None:
        """Fold one event (``weight`` < 0 forgets it) and recompute that slot's shift."""
        self._grow(slots)
        w = weight * self._w(ts)
        self.s[slot] += w * residual
        self.q[slot] += w * residual * residual
        self.n[slot] += w
        if weight > 0 and ts > self.last[slot]:
            self.last[slot] = ts
        self.shift[slot] = self._shift(slot)
        self.active = bool(np.any(self.shift != 0.0))

    def _shift(self, slot: int) -> float:
        n = float(self.n[slot])
        if n <= 1e-12 or self._t_ref is None:
            return 0.0
        # events within about one half-life of the model's newest one (constant while it gets none)
        n_eff = n * 2.0 ** ((self._t_ref - float(self.last[slot])) / self.half_life)
        if n_eff < self.min_events:
            return 0.0
        d = float(self.s[slot]) / n
        var = max(float(self.q[slot]) / n - d * d, 0.01)
        excess = abs(d) - self.tolerance - self.z * math.sqrt(var / n_eff)
        return math.copysign(excess, d) if excess > 0.0 else 0.0

    def report(self, names: dict[int, str]) -> dict[str, dict[str, float]]:
        """Per model with guard evidence: its recent events, mean residual and current shift."""
        out = {}
        for slot in np.flatnonzero(self.n > 1e-12):
            n = float(self.n[slot])
            recent = n * 2.0 ** (((self._t_ref or 0.0) - float(self.last[slot])) / self.half_life)
            out[names.get(int(slot), f"slot {slot}")] = {
                "recent_events": round(recent, 2),
                "mean_residual": round(float(self.s[slot]) / n, 4),
                "shift": round(float(self.shift[slot]), 4),
            }
        return out

    def apply(self, train: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Train sums (2, candidates), A's then B's, with each model's mean moved by its shift."""
        if not self.active:
            return train
        shift = np.zeros(len(slots))
        known = slots < len(self.shift)
        shift[known] = self.shift[slots[known]]
        total = train[0] + train[1]
        mean = np.divide(train[0], total, out=np.zeros_like(total), where=total > 0)
        mean = np.clip(mean - shift, 0.0, 1.0)
        out = np.empty_like(train)
        out[0] = mean * total
        out[1] = total - out[0]
        return out
