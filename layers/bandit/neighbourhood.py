"""Layer 2 per prompt: Thompson sampling over the prompt's neighbourhood of rewarded requests.

A tier is too coarse a context to tell which prompts need the strong model (the replay: the kNN
router on the same MiniLM embedding routes better than tier-context Thompson), but kNN neither
explores nor learns from feedback. This selector is both. For a prompt with embedding ``x``, each
candidate model ``i`` gets::

    alpha_i = s_i·(alpha0_i + A_ctx,i) + lam·Σ_j κ_j·A_j,i     (beta likewise with B)
    s_i = min(1, ctx_cap / (alpha0_i + A_ctx,i + beta0_i + B_ctx,i))
    κ_j = exp((sim(x, x_j) - max_j sim) / temp)   over the ``k`` nearest remembered rows j

where ``alpha0`` is the tier (or fitted) prior, ``A_ctx`` the context's decayed sums exactly as
``ThompsonSelector`` keeps them (capped at ``ctx_cap`` observations, keeping its mean, so that the
neighbourhood decides once it has evidence), and ``A_j,i`` row j's decayed reward sums for model
i. Defaults (k 100, temp 10: nearly kNN's uniform weights, ctx_cap 64) are the ones the replay
preferred (ops/bench/RESULTS_replay.md); train rows count x16 (``prior_weight``, chosen on a
held-out fifth of the train splits, ``ops/bench/l2_tune.py``: a posterior as concentrated as
kNN's mean, so Thompson stops exploring where the benchmark already knows the answer);
``kernel: absolute`` uses ``sim - 1``. The draw, the cost term, the ranking, the propensity, the
half-life and the source weights are the
Thompson selector's. Rows are keyed by request id: a failure of one model and feedback on the
fallback model of the same request land in one row. ``prior_rows`` (train data, e.g. from
``compass train --history``) are rows that the half-life does not fade, weighted by
``prior_weight``. So that a regressed model cannot hide behind its benchmark rows, the drift
guard (layers/bandit/drift.py, on by default) moves a model's train rows by how far its recent
live rewards sit from their prediction, beyond a tolerance. Two older options, off by default,
trade i.i.d. utility for drift instead: ``prior_fades`` (train rows age under the half-life from
the first live reward) and ``prior_takeover`` (n0: a model's train rows scaled by
n0 / (n0 + its live neighbourhood evidence)).

The embedding comes with the decision (``SelectionContext.embedding``, the vector Layer 1 and the
cache already computed) and with each reward (``RewardEvent.embedding``, stored with the request);
without one the prompt gets the context posterior, i.e. plain Thompson. State is a fold over the
reward events in order, so ``rebuild`` reproduces the live posteriors (see layers/bandit/memory.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from layers.bandit.base import RewardEvent, Selection, SelectionContext
from layers.bandit.drift import DriftGuard
from layers.bandit.memory import NeighbourMemory
from layers.bandit.onboarding import Borrowing
from layers.bandit.thompson import DEFAULTS as THOMPSON_DEFAULTS
from layers.bandit.thompson import ThompsonSelector
from layers.types import ModelSpec

NEIGHBOUR_DEFAULTS: dict[str, Any] = {
    "k": 100,
    "temp": 10.0,
    "lam": 1.0,
    "ctx_weight": 1.0,
    "ctx_cap": 64.0,  # the context posterior counts as at most this many observations (keeps its mean)
    # ... and at most this many once train rows are loaded (None: ctx_cap): a model added after the
    # memory was built is then judged by its own neighbours rather than its tier-wide mean. A
    # trade-off in the onboarding replay (ops/bench/l2_tune.py --onboard), so off by default.
    "ctx_cap_trained": None,
    "kernel": "relative",  # absolute: exp((sim - 1)/temp); relative: exp((sim - nearest sim)/temp)
    "prior_weight": 16.0,  # a train row counts 16 times (chosen on train data: ops/bench/l2_tune.py)
    # Train rows are discounted per model where live neighbours contradict them by more than this
    # many standard errors (None: never): a regressed model cannot hide behind its benchmark.
    "conflict_z": None,
    # Train rows of a model are scaled by n0 / (n0 + its live evidence in the neighbourhood) with
    # prior_takeover = n0 (None: never): live feedback takes over from the benchmark model by model.
    "prior_takeover": None,
    # Whether train rows age under half_life_s like live rewards (from the first live reward on).
    "prior_fades": False,
    # The drift guard (layers/bandit/drift.py): a model's train evidence moves by how far its recent
    # live rewards sit below (or above) its train rows' mean, beyond this tolerance (None: off).
    # Chosen on the train splits' held-out fifth (ops/bench/l2_tune.py --split val): 0.03, 2 s.e.,
    # 100 s; within the tolerance decisions are exactly those without the guard.
    "drift_tolerance": 0.03,
    "drift_z": 2.0,  # ... and beyond this many standard errors of that recent mean
    "drift_half_life_s": 100.0,  # recency of the guard's sums (event time)
    "drift_min_events": 10.0,  # recent events of the model needed before it acts
    # Opt-in (None: off): a model without train rows (added later) borrows those of the trained
    # model its rewards track best, offset by their mean difference, once it has this many rewards;
    # at most borrow_cap observations a neighbourhood (layers/bandit/onboarding.py). Better on val
    # for every set, on test only on routerbench (BENCHMARKS.md "Borrowing"), so not the default.
    "borrow_min_events": None,
    "borrow_cap": 64.0,
    "max_rows": 200_000,
    "chunk": 256,
    "nprobe": 8,
    "dim": 384,
    "memory_path": None,  # .npz with vectors, models, rewards (and mask) as prior rows
}


def as_vector(value: Any) -> np.ndarray | None:
    """A float32 vector from an array, a list or float32 bytes (as stored); None if absent."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(value, dtype=np.float32)
    return np.asarray(value, dtype=np.float32).reshape(-1)


class NeighbourhoodSelector(ThompsonSelector):
    name = "neighbourhood"
    uses_embedding = True

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        pool: list[ModelSpec] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        opts = dict(options or {})
        mine = {k: opts.pop(k) for k in list(opts) if k in NEIGHBOUR_DEFAULTS and k not in THOMPSON_DEFAULTS}
        unknown = set(opts) - set(THOMPSON_DEFAULTS)
        if unknown:
            known = sorted({*THOMPSON_DEFAULTS, *NEIGHBOUR_DEFAULTS})
            raise ValueError(f"unknown neighbourhood options: {sorted(unknown)}; known: {known}")
        self.nopts = {**NEIGHBOUR_DEFAULTS, **mine}
        self.k = int(self.nopts["k"])
        self.temp = float(self.nopts["temp"])
        self.lam = float(self.nopts["lam"])
        self.ctx_weight = float(self.nopts["ctx_weight"])
        cap, cap_trained = self.nopts["ctx_cap"], self.nopts["ctx_cap_trained"]
        self.ctx_cap_cold = None if cap is None else float(cap)
        self.ctx_cap_trained = self.ctx_cap_cold if cap_trained is None else float(cap_trained)
        self.ctx_cap = self.ctx_cap_cold
        if self.nopts["kernel"] not in ("absolute", "relative"):
            raise ValueError("neighbourhood option 'kernel' must be 'absolute' or 'relative'")
        self.relative = self.nopts["kernel"] == "relative"
        z = self.nopts["conflict_z"]
        self.conflict_z2 = None if z is None else float(z) ** 2
        take = self.nopts["prior_takeover"]
        self.takeover = None if take is None else float(take)
        self.prior_fades = bool(self.nopts["prior_fades"])
        tol = self.nopts["drift_tolerance"]
        self.guard = None
        if tol is not None:
            self.guard = DriftGuard(
                float(tol),
                float(self.nopts["drift_z"]),
                float(self.nopts["drift_half_life_s"]),
                float(self.nopts["drift_min_events"]),
            )
        self._prior_t: float | None = None  # when train rows started ageing (the first live reward)
        self._train_cache: dict[bytes, np.ndarray | None] | None = None  # rebuild: batch-searched sums
        self.memory = NeighbourMemory(
            int(self.nopts["dim"]),
            int(self.nopts["max_rows"]),
            int(self.nopts["chunk"]),
            int(self.nopts["nprobe"]),
        )
        bm = self.nopts["borrow_min_events"]
        self.borrow = None if bm is None else Borrowing(float(bm), self.nopts["borrow_cap"])
        self._trained = np.zeros(0, dtype=bool)  # slots with train evidence
        self.prior = NeighbourMemory(int(self.nopts["dim"]), 1 << 62, int(self.nopts["chunk"]))
        super().__init__(opts, pool, clock)
        if self.nopts["memory_path"]:
            self.load_prior_rows(str(self.nopts["memory_path"]))

    # ---- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        self._prior_t = None
        if hasattr(self, "memory"):
            self.memory.reset()
        if getattr(self, "guard", None) is not None:
            self.guard.reset()
        if getattr(self, "borrow", None) is not None:
            self.borrow.reset()

    def prior_rows(
        self,
        vectors: np.ndarray,
        models: list[str],
        rewards: np.ndarray,
        mask: Any = None,
        weight: float | None = None,
    ) -> None:
        """Train rows: one per prompt, rewards (prompts, models) in [0, 1]; ``mask`` marks observed;
        each observation counts ``weight`` times (default the ``prior_weight`` option)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        slots = [self._slot(m) for m in models]
        w = float(self.nopts["prior_weight"] if weight is None else weight)
        seen = np.ones_like(rewards, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        base = self.prior.n
        if len(vectors):
            self.ctx_cap = self.ctx_cap_trained
        for j, vec in enumerate(vectors):
            self.prior.row(f"prior:{base + j}", vec, len(self._index))
        self.prior._reserve(self.prior.n, len(self._index))
        r = np.clip(rewards, 0.0, 1.0)
        for c, slot in enumerate(slots):
            rows = base + np.arange(len(vectors))
            self.prior.sa[rows, slot] += (w * r[:, c] * seen[:, c]).astype(np.float32)
            self.prior.sb[rows, slot] += (w * (1.0 - r[:, c]) * seen[:, c]).astype(np.float32)
        trained = np.zeros(len(self._index), dtype=bool)
        trained[: len(self._trained)] = self._trained
        for c, slot in enumerate(slots):
            trained[slot] |= bool(seen[:, c].any())
        self._trained = trained

    def load_prior_rows(self, path: str) -> None:
        data = np.load(path, allow_pickle=False)
        mask = data["mask"] if "mask" in data.files else None
        weight = float(data["weight"]) if "weight" in data.files else None  # history rows: 1
        self.prior_rows(data["vectors"], [str(m) for m in data["models"]], data["rewards"], mask, weight)

    def _weight(self, event: RewardEvent) -> float:
        if self._prior_t is None:
            self._prior_t = event.ts
        scale_before = self._t_ref
        w = super()._weight(event)
        if self.half_life is not None and scale_before is not None and self._t_ref != scale_before:
            self.memory.scale(2.0 ** ((scale_before - self._t_ref) / self.half_life))
        return w

    def _apply(self, event: RewardEvent, sign: float) -> None:
        super()._apply(event, sign)
        vector = as_vector(getattr(event, "embedding", None))
        if vector is None or len(vector) != self.memory.dim:
            return
        reward = min(1.0, max(0.0, float(event.reward)))
        slot = self._slot(event.model)
        w = sign * self._weight(event)
        row = self.memory.row(event.request_id, vector, len(self._index))

        self.memory.add(row, slot, w * reward, w * (1.0 - reward))
        if self.guard is not None and self.prior.n > 0:
            self._guard_fold(event, vector, reward, slot, sign)
        if (
            self.borrow is not None
            and self.prior.n > 0
            and not (slot < len(self._trained) and self._trained[slot])
        ):
            train = self._train_full(vector)
            if train is not None:
                self.borrow.add(slot, reward, train, self._trained, sign)

    def _guard_fold(
        self, event: RewardEvent, vector: np.ndarray, reward: float, slot: int, sign: float
    ) -> None:
        """The residual of this reward against the model's train rows at this prompt (skipped
        where the model has no train evidence nearby)."""
        train = self._train_sums(vector, slot)
        if train is None or train[0] + train[1] <= 1e-9:
            return
        a, b = train
        source_w = self.source_weights.get(event.source, 1.0)
        self.guard.add(slot, a / (a + b) - reward, event.ts, sign * source_w, len(self._index))

    def _train_full(self, vector: np.ndarray) -> np.ndarray | None:
        """The train rows' (2, models) sums at ``vector`` (batch-searched during a rebuild)."""
        cached = self._train_cache.get(vector.tobytes()) if self._train_cache is not None else None
        return cached if cached is not None else self._neighbour_sums(self.prior, vector)

    def _train_sums(self, vector: np.ndarray, slot: int) -> tuple[float, float] | None:
        sums = self._train_full(vector)
        if sums is None or slot >= sums.shape[1]:
            return None
        return float(sums[0, slot]), float(sums[1, slot])

    def rebuild(self, events: Iterable[RewardEvent]) -> None:
        """As the base fold, with the guard's train-row sums searched in one batch first (the
        same sums as one search per event: ~10x faster on a long history)."""
        events = list(events)
        if (self.guard is not None or self.borrow is not None) and self.prior.n > 0:
            self._train_cache = self._batch_train_sums(events)
        try:
            super().rebuild(events)
        finally:
            self._train_cache = None

    def _batch_train_sums(
        self, events: list[RewardEvent], batch: int = 4096
    ) -> dict[bytes, np.ndarray | None]:
        vectors: dict[bytes, np.ndarray] = {}
        for event in events:
            vector = as_vector(getattr(event, "embedding", None))
            if vector is not None and len(vector) == self.prior.dim:
                vectors.setdefault(vector.tobytes(), vector)
        keys = list(vectors)
        out: dict[bytes, np.ndarray | None] = {}
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            hits = self.prior.search_many(np.stack([vectors[key] for key in chunk]), self.k)
            for key, (rows, sims) in zip(chunk, hits, strict=True):
                out[key] = self._kernel_sums(self.prior, rows, sims)
        return out

    # ---- choice ------------------------------------------------------------------------------

    def _neighbour_sums(self, mem: NeighbourMemory, query: np.ndarray) -> np.ndarray | None:
        """(Σ κ_j·A_j, Σ κ_j·B_j) over the nearest rows, one (2, known models) array; None if none."""
        if mem.n == 0:  # nothing remembered (e.g. no train rows): skip the index call
            return None
        rows, sims = mem.search(query, self.k)
        return self._kernel_sums(mem, rows, sims)

    def _kernel_sums(self, mem: NeighbourMemory, rows: np.ndarray, sims: np.ndarray) -> np.ndarray | None:
        if len(rows) == 0:
            return None
        x = np.subtract(sims, float(sims.max()) if self.relative else 1.0, dtype=np.float64)
        x /= self.temp
        kappa = np.exp(x, out=x)[:, None]
        # Multiply-and-sum, not a BLAS gemv (threaded BLAS stalls on a busy machine); whole rows
        # gathered first (contiguous), then the candidates' columns: the same sums, ~2.4x faster.
        sums = (mem.sums.take(rows, axis=0) * kappa).sum(axis=0).reshape(2, -1)  # A's, then B's
        if sums.shape[1] < len(self._index):  # models with no remembered reward yet: sums 0
            sums = np.concatenate((sums, np.zeros((2, len(self._index) - sums.shape[1]))), axis=1)
        return sums

    def _inputs(
        self, ctx: SelectionContext, context: str, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
        alpha, beta, penalty, weight, slots = super()._inputs(ctx, context, now)
        query = as_vector(getattr(ctx, "embedding", None))
        if query is None or len(query) != self.memory.dim:
            return alpha, beta, penalty, weight, slots
        if self.ctx_weight != 1.0:  # undo part of the context evidence the parent added
            a0, b0 = self._prior(context)
            alpha = a0[slots] + self.ctx_weight * (alpha - a0[slots])
            beta = b0[slots] + self.ctx_weight * (beta - b0[slots])
        # alpha and beta as the rows of one array: each step below is one numpy call, not two
        post = np.empty((2, len(slots)))
        post[0], post[1] = alpha, beta
        if self.ctx_cap is not None:
            post *= np.minimum(1.0, self.ctx_cap / (alpha + beta))
        live = self._neighbour_sums(self.memory, query)
        decay = self._decay(now)
        train = self._neighbour_sums(self.prior, query)
        if train is not None and self.borrow is not None and self.borrow.ref:
            train = self.borrow.apply(train)
        if live is not None:
            live = live.take(slots, axis=1)
            if decay != 1.0:
                live = decay * live
        if train is not None:
            train = train.take(slots, axis=1)
            if self.conflict_z2 is not None and live is not None:
                train = np.stack(self._discount(live[0], live[1], train[0], train[1]))
            if self.guard is not None and self.guard.active:
                train = self.guard.apply(train, slots)
            if self.takeover is not None or self.prior_fades:
                la, lb = (live[0], live[1]) if live is not None else (0.0, 0.0)
                train = np.stack(self._age_prior(la, lb, train[0], train[1], decay))
            live = train if live is None else live + train
        # post + lam·(decay·live + train), skipping the steps that cannot change a float (x + 0, 1·x)
        if live is not None:
            post += live if self.lam == 1.0 else self.lam * live
        np.maximum(post, 1e-9, out=post)
        return post[0], post[1], penalty, weight, slots

    def _age_prior(self, la: Any, lb: Any, pa: Any, pb: Any, decay: float) -> tuple[Any, Any]:
        """Train evidence as live evidence accumulates (``prior_takeover``) and as time passes
        (``prior_fades``: the half-life from the first live reward, like a live reward of then)."""
        keep: Any = 1.0
        if self.takeover is not None:
            keep = self.takeover / (self.takeover + la + lb)
        if self.prior_fades and self.half_life is not None and self._prior_t is not None:
            keep = keep * decay * 2.0 ** ((self._prior_t - self._t_ref) / self.half_life)
        return pa * keep, pb * keep

    def _discount(self, la: Any, lb: Any, pa: Any, pb: Any) -> tuple[Any, Any]:
        """Scale each model's train evidence by exp(-(z² - z0²)/2) where the live neighbours' mean
        differs from it by z standard errors, z > z0 (a prior-data conflict test; z ≤ z0: kept)."""
        n_live = la + lb
        n_prior = pa + pb
        m_live = la / np.maximum(n_live, 1e-12)
        m_prior = pa / np.maximum(n_prior, 1e-12)
        z2 = n_live * (m_live - m_prior) ** 2 / (m_prior * (1.0 - m_prior) + 1e-3)
        keep = np.exp(-np.maximum(z2 - self.conflict_z2, 0.0) / 2.0)
        return pa * keep, pb * keep

    def _propensity_hits(
        self,
        context: str,
        slots: np.ndarray,
        alpha: np.ndarray,
        beta: np.ndarray,
        penalty: np.ndarray,
        best: int,
    ) -> int:
        """Per-prompt posteriors change every call, so a bank of Beta draws never stays valid, and
        64 x 40 fresh Beta draws cost ~0.3 ms. The propensity's draws use the normal with each
        posterior's mean and variance instead (~10x cheaper; the decision itself is a Beta draw)."""
        total = alpha + beta
        mean = alpha / total
        sd = np.sqrt(alpha * beta / (total * total * (total + 1.0)))
        draws = self.rng.standard_normal((self.samples, len(alpha)))
        draws *= sd  # in place, the same operations as mean + sd·z - penalty
        draws += mean
        draws -= penalty
        return int(np.count_nonzero(draws.argmax(axis=1) == best))

    def select(self, ctx: SelectionContext) -> Selection:
        selection = super().select(ctx)
        if getattr(ctx, "embedding", None) is not None:
            selection.method = "thompson_neighbourhood"
        return selection

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        out["neighbourhood"] = {
            **{k: v for k, v in self.nopts.items() if k != "memory_path"},
            "memory_path": self.nopts["memory_path"],
            "rows": self.memory.n,
            "prior_rows": self.prior.n,
            "memory_bytes": self.memory.nbytes() + self.prior.nbytes(),
        }
        if self.guard is not None:
            names = {slot: model for model, slot in self._index.items()}
            out["drift"] = {
                "acting": self.prior.n > 0,  # it compares with train rows: none loaded, nothing to do
                "models": self.guard.report(names),
            }
        return out
