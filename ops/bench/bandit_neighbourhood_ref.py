"""The per-prompt selector's decision path as it was before the speed-up (commit b41709d), kept so
that the bench can time old and new side by side in one run and a test can prove that the new
path decides bit for bit the same (``tests/test_bandit_neighbourhood_speed.py``).

Only what the speed-up changed is copied: the memory's layout (separate ``sa`` and ``sb``
arrays) and search (FAISS's Python wrapper, boolean masks), the neighbour sums, the posterior
combination and the propensity draws. Folding, the index and the Thompson parts are the live code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.bandit.base import Selection, SelectionContext
from layers.bandit.memory import FIRST_TRAIN, NeighbourMemory
from layers.bandit.neighbourhood import NeighbourhoodSelector, as_vector


class ReferenceMemory(NeighbourMemory):
    """``NeighbourMemory`` with the sums as two separate arrays and the search as they were."""

    def _set_sums(self, sums: np.ndarray) -> None:
        width = sums.shape[1] // 2
        self.sums = sums  # unused here: only the separate, contiguous copies below
        self.sa, self.sb = sums[:, :width].copy(), sums[:, width:].copy()

    def _reserve(self, rows: int, slots: int) -> None:
        cap, width = self.vec.shape[0], self.sa.shape[1]
        if rows > cap:
            new = min(max(rows, 2 * cap, 1024), self.max_rows)
            self.vec = np.concatenate([self.vec, np.zeros((new - cap, self.dim), np.float16)])
            self.sa = np.concatenate([self.sa, np.zeros((new - cap, width), np.float32)])
            self.sb = np.concatenate([self.sb, np.zeros((new - cap, width), np.float32)])
        if slots > width:
            extra = np.zeros((self.sa.shape[0], slots - width), np.float32)
            self.sa = np.concatenate([self.sa, extra], axis=1)
            self.sb = np.concatenate([self.sb, extra.copy()], axis=1)

    def scale(self, factor: float) -> None:
        self.sa[: self.n] *= factor
        self.sb[: self.n] *= factor

    def _compact(self) -> None:
        drop = self.max_rows // 4
        keep = slice(drop, self.n)
        vec, sa, sb = self.vec[keep].copy(), self.sa[keep].copy(), self.sb[keep].copy()
        ids = self.request_of[drop : self.n]
        self.reset()
        self.vec, self.sa, self.sb = vec, sa, sb
        self.n = len(ids)
        self.request_of = ids
        self.rows_by_request = {rid: i for i, rid in enumerate(ids)}
        while self.n - self.built >= self.chunk and self.n >= FIRST_TRAIN:
            self._add_chunk(min(self.n, max(FIRST_TRAIN, self.built + self.chunk)))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        import faiss

        if faiss.omp_get_max_threads() != 1:
            faiss.omp_set_num_threads(1)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        parts = []
        if self.n > self.built:
            sims, ids = self._tail_index().search(q, k)
            parts.append((ids[0] + self.built, sims[0], ids[0] >= 0))
        if self.index is not None:
            sims, ids = self.index.search(q, k)
            parts.append((ids[0], sims[0], ids[0] >= 0))
        if len(parts) == 1:
            rows, sims, ok = parts[0]
            return rows[ok], sims[ok]
        rows = np.concatenate([p[0][p[2]] for p in parts])
        sims = np.concatenate([p[1][p[2]] for p in parts])
        if len(rows) > k:
            top = np.argpartition(-sims, k - 1)[:k]
            rows, sims = rows[top], sims[top]
        return rows, sims

    def nbytes(self) -> int:
        held = 0 if self.index is None else self.index.ntotal * (self.dim + 8) + self.nlist * 4 * self.dim
        tail = 0 if self.tail is None else self.tail.ntotal * 4 * self.dim
        ids = 100 * len(self.request_of)
        return int(self.vec.nbytes + self.sa.nbytes + self.sb.nbytes + held + tail + ids)


class ReferenceNeighbourhood(NeighbourhoodSelector):
    """The same selector with the decision path of commit b41709d."""

    def __init__(self, options: dict[str, Any] | None = None, pool: Any = None, clock: Any = None) -> None:
        super().__init__(options, pool, clock)
        self._ref_cand: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        dim, chunk = int(self.nopts["dim"]), int(self.nopts["chunk"])
        self.memory = ReferenceMemory(dim, int(self.nopts["max_rows"]), chunk, int(self.nopts["nprobe"]))
        self.prior = ReferenceMemory(dim, 1 << 62, chunk)
        if self.nopts["memory_path"]:
            self.load_prior_rows(str(self.nopts["memory_path"]))

    def _thompson_inputs(
        self, ctx: SelectionContext, context: str, now: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
        key = tuple(m.name for m in ctx.candidates)
        cached = self._ref_cand.get(key)
        if cached is None:
            self._candidates(ctx.candidates)
            slots = np.array([self._index[m.name] for m in ctx.candidates], dtype=np.int64)
            pin = np.array([m.input_price_per_mtok for m in ctx.candidates]) / 1e6
            pout = np.array([m.output_price_per_mtok for m in ctx.candidates]) / 1e6
            cached = self._ref_cand[key] = (slots, pin, pout)
        slots, pin, pout = cached
        a0, b0 = self._prior(context)
        state = self._states.get(context)
        if state is None:
            alpha, beta = a0.copy(), b0.copy()
        else:
            state.grow(len(self._index))
            decay = self._decay(now)
            alpha, beta = a0 + decay * state.sa, b0 + decay * state.sb
        cost = pin * ctx.prompt_tokens + pout * ctx.expected_completion_tokens
        top = float(cost.max()) if len(cost) else 0.0
        norm = cost / top if top > 0 else np.zeros_like(cost)
        weight = self.cost_weight if ctx.cost_weight is None else float(ctx.cost_weight)
        return np.maximum(alpha[slots], 1e-9), np.maximum(beta[slots], 1e-9), weight * norm, weight, slots

    def select(self, ctx: SelectionContext) -> Selection:
        if not ctx.candidates:
            raise ValueError("no candidate models to select from")
        context = self.context_of(ctx.classification)
        alpha, beta, penalty, weight, slots = self._inputs(ctx, context)
        theta = self.rng.beta(alpha, beta)
        utility = theta - penalty
        order = np.argsort(-utility, kind="stable")
        best = int(order[0])
        propensity = None
        if self.samples > 0:
            hits = self._propensity_hits(context, slots, alpha, beta, penalty, best)
            propensity = (hits + 1) / (self.samples + 1)
        names = [m.name for m in ctx.candidates]
        embedded = as_vector(getattr(ctx, "embedding", None)) is not None
        return Selection(
            model=names[best],
            method="thompson_neighbourhood" if embedded else "thompson",
            context=context,
            candidates=names,
            ranked=[names[i] for i in order.tolist()],
            utilities=dict(zip(names, utility.tolist(), strict=True)),
            sampled=dict(zip(names, theta.tolist(), strict=True)),
            propensity=propensity,
            cost_weight=weight,
        )

    def _neighbour_sums(self, mem: NeighbourMemory, query: np.ndarray, slots: np.ndarray) -> tuple[Any, Any]:
        if mem.n == 0:
            return 0.0, 0.0
        rows, sims = mem.search(query, self.k)
        if len(rows) == 0:
            return 0.0, 0.0
        ref = float(sims.max()) if self.relative else 1.0
        kappa = np.exp((sims.astype(np.float64) - ref) / self.temp)
        width = mem.sa.shape[1]
        ok = slots < width
        a = np.zeros(len(slots))
        b = np.zeros(len(slots))
        if ok.any():
            cols = slots[ok]
            weights = kappa[:, None]
            a[ok] = (mem.sa.take(rows, axis=0) * weights).sum(axis=0)[cols]
            b[ok] = (mem.sb.take(rows, axis=0) * weights).sum(axis=0)[cols]
        return a, b

    def _batch_train_sums(self, events: list[Any], batch: int = 4096) -> dict[bytes, Any]:
        return {}  # one search per event, below

    def _train_full(self, vector: np.ndarray) -> np.ndarray | None:
        a, b = self._neighbour_sums(self.prior, vector, np.arange(len(self._index)))
        return None if np.isscalar(a) else np.stack([a, b])

    def _train_sums(self, vector: np.ndarray, slot: int) -> tuple[float, float] | None:
        a, b = self._neighbour_sums(self.prior, vector, np.array([slot]))
        return None if np.isscalar(a) else (float(a[0]), float(b[0]))

    def _inputs(
        self, ctx: SelectionContext, context: str, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
        alpha, beta, penalty, weight, slots = self._thompson_inputs(ctx, context, now)
        query = as_vector(getattr(ctx, "embedding", None))
        if query is None or len(query) != self.memory.dim:
            return alpha, beta, penalty, weight, slots
        if self.ctx_weight != 1.0:
            a0, b0 = self._prior(context)
            alpha = a0[slots] + self.ctx_weight * (alpha - a0[slots])
            beta = b0[slots] + self.ctx_weight * (beta - b0[slots])
        if self.ctx_cap is not None:
            shrink = np.minimum(1.0, self.ctx_cap / (alpha + beta))
            alpha, beta = alpha * shrink, beta * shrink
        la, lb = self._neighbour_sums(self.memory, query, slots)
        decay = self._decay(now)
        pa, pb = self._neighbour_sums(self.prior, query, slots)
        if self.borrow is not None and self.borrow.ref and self.prior.n:
            full = self._train_full(query)
            if full is not None:
                pa, pb = self.borrow.apply(full)[:, slots]
        if self.conflict_z2 is not None and self.prior.n and self.memory.n:
            pa, pb = self._discount(decay * la, decay * lb, pa, pb)
        if self.guard is not None and self.guard.active and self.prior.n:
            pa, pb = self.guard.apply(np.stack([pa, pb]), slots)
        alpha = np.maximum(alpha + self.lam * (decay * la + pa), 1e-9)
        beta = np.maximum(beta + self.lam * (decay * lb + pb), 1e-9)
        return alpha, beta, penalty, weight, slots

    def _propensity_hits(
        self,
        context: str,
        slots: np.ndarray,
        alpha: np.ndarray,
        beta: np.ndarray,
        penalty: np.ndarray,
        best: int,
    ) -> int:
        total = alpha + beta
        mean = alpha / total
        sd = np.sqrt(alpha * beta / (total * total * (total + 1.0)))
        draws = mean + sd * self.rng.standard_normal((self.samples, len(alpha)))
        return int(np.count_nonzero(np.argmax(draws - penalty, axis=1) == best))
