"""A model added after the train memory was built borrows the train rows of the model it tracks best.

The incumbents' train rows (``prior_weight`` x16) make their posteriors as sharp as a kNN
router's; a newcomer has only its live rewards, a few per neighbourhood, so Thompson keeps
doubting it long after it has shown it is better (the onboarding replay: the late model's share
decays after its exploration burst). But a new model is rarely unlike every known one: a new
release of a family, a model of the same size. For each reward of a model without train rows,
this keeps, for every trained model ``j``, the residual ``e_j = r - mu_j(x)`` between the
newcomer's reward and ``j``'s train-row mean at that prompt. The reference is the ``j`` whose
residuals vary least (the best predictor up to a constant), and the newcomer's train evidence
becomes ``j``'s, with its mean moved by the mean residual and its count capped at ``cap``
observations per neighbourhood: it is placed where its closest known model is good, offset by how
much better or worse it proved on its own requests, and its own neighbours (which keep counting
on top) can still overturn it — without the cap a poor early reference locks it out for good.

Plain sums over events with a static train memory: order-independent, ``forget`` subtracts
exactly, a rebuild reproduces them.

An opt-in (``borrow_min_events``): chosen on the val splits, where it raised the utility after the
join on every set, it held on test only for routerbench; on routellm (two models, so the reference
is the other one whatever its fit) and split2 it lost utility (BENCHMARKS.md, "Borrowing").
"""

from __future__ import annotations

import numpy as np


class Borrowing:
    """Per newcomer slot: residual sums against every trained slot, and the chosen reference."""

    def __init__(self, min_events: float, cap: float | None) -> None:
        self.min_events = float(min_events)
        self.cap = None if cap is None else float(cap)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[int, np.ndarray] = {}  # slot -> (3, width): Σe, Σe², n per trained slot
        self.ref: dict[int, tuple[int, float]] = {}  # slot -> (reference slot, offset)

    def add(self, slot: int, reward: float, train: np.ndarray, trained: np.ndarray, sign: float) -> None:
        """Fold one reward of newcomer ``slot``; ``train`` the (2, width) train sums at its prompt."""
        width = min(train.shape[1], len(trained))
        total = train[0, :width] + train[1, :width]
        seen = trained[:width] & (total > 1e-9)
        if not seen.any():
            return
        acc = self.sums.get(slot)
        if acc is None or acc.shape[1] < width:
            grown = np.zeros((3, width))
            if acc is not None:
                grown[:, : acc.shape[1]] = acc
            acc = self.sums[slot] = grown
        mean = np.divide(train[0, :width], total, out=np.zeros(width), where=seen)
        e = np.where(seen, reward - mean, 0.0)
        acc[0, :width] += sign * e
        acc[1, :width] += sign * e * e
        acc[2, :width] += sign * seen
        self._choose(slot, acc)

    def _choose(self, slot: int, acc: np.ndarray) -> None:
        n = acc[2]
        ok = n >= self.min_events
        if not ok.any():
            self.ref.pop(slot, None)
            return
        safe = np.where(ok, n, 1.0)
        d = acc[0] / safe
        mse = np.where(ok, acc[1] / safe - d * d, np.inf)
        j = int(np.argmin(mse))
        self.ref[slot] = (j, float(d[j]))

    def apply(self, train: np.ndarray) -> np.ndarray:
        """Train sums (2, width) with each newcomer's column borrowed from its reference."""
        if not self.ref:
            return train
        out = train  # a fresh array per decision: changed in place
        for slot, (j, offset) in self.ref.items():
            if slot >= out.shape[1] or j >= out.shape[1]:
                continue
            total = train[0, j] + train[1, j]
            if total <= 1e-9:
                out[:, slot] = 0.0
                continue
            mean = min(1.0, max(0.0, train[0, j] / total + offset))
            count = total if self.cap is None else min(total, self.cap)
            out[0, slot] = mean * count
            out[1, slot] = (1.0 - mean) * count
        return out
