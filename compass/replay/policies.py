"""Routing policies under replay: ours (Thompson variants) and the baselines.

A policy sees one test prompt at a time (``choose(i)``) and then only the chosen model's reward
(``update``), as in production with bandit feedback. Offline knowledge (kNN neighbours, fitted
priors, clusters, and the choice of k for both) comes from the TRAIN split only, through ``Env``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from compass.replay.data import ReplayData, approx_tokens
from compass.replay.fit import choose_clusters, choose_knn_k, fit_context_priors, kmeans, knn_estimates
from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.neighbourhood import NeighbourhoodSelector
from layers.bandit.static import StaticTierSelector
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification


@dataclass
class Env:
    """Everything about the test stream a policy may use, fixed for a run."""

    data: ReplayData
    test_cls: list[Classification]
    train_cls: list[Classification]
    test_vecs: np.ndarray
    train_vecs: np.ndarray
    cost_weight: float
    seed: int
    workdir: Path  # where fitted priors files go (a temporary directory of the evaluation)
    _cache: dict[str, Any] = field(default_factory=dict)
    norm_cost: np.ndarray = field(init=False)  # (test prompts, models): expected cost / per-prompt max
    tokens: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        specs = self.data.specs
        self.tokens = np.array([approx_tokens(p) for p in self.data.test.prompts])
        comp = self.data.expected_completion_tokens
        cost = np.array([[s.expected_cost(int(t), comp) for s in specs] for t in self.tokens])
        self.norm_cost = cost / np.maximum(cost.max(axis=1, keepdims=True), 1e-300)

    def shared(self, key: str, make: Any) -> Any:
        """Train-derived artefacts reused across runs (kNN estimates, fitted priors, clusters)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


class Policy:
    name = "abstract"
    cost_aware = False  # whether the cost weight changes what it does (the frontier sweep)
    uses_train = False  # learns anything from the train split's rewards

    def __init__(self, env: Env) -> None:
        self.env = env
        self.rng = np.random.default_rng(env.seed)

    def choose(self, i: int) -> int:
        raise NotImplementedError

    def update(self, i: int, arm: int, reward: float, step: int) -> None:
        """Bandit feedback for the chosen arm only (static policies ignore it)."""


class Cheapest(Policy):
    name = "always_cheapest"

    def choose(self, i: int) -> int:
        return int(np.argmin([s.input_price_per_mtok + s.output_price_per_mtok for s in self.env.data.specs]))


class Best(Policy):
    """The model with the best TRAIN quality, on every prompt."""

    name = "always_best"
    uses_train = True

    def choose(self, i: int) -> int:
        return int(np.argmax([s.capability for s in self.env.data.specs]))


class RandomPolicy(Policy):
    name = "random"

    def choose(self, i: int) -> int:
        return int(self.rng.integers(len(self.env.data.models)))


def selection_context(env: Env, i: int, cls: Classification | None = None) -> SelectionContext:
    return SelectionContext(
        classification=cls or env.test_cls[i],
        candidates=env.data.specs,
        prompt_tokens=int(env.tokens[i]),
        expected_completion_tokens=env.data.expected_completion_tokens,
        cost_weight=env.cost_weight,
    )


class Static(Policy):
    """The original LLM Compass map: cheapest model of the prompt's tier (model tiers from train quality)."""

    name = "static_tier_map"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.selector = StaticTierSelector({}, env.data.specs)
        self.index = {m: k for k, m in enumerate(env.data.models)}

    def choose(self, i: int) -> int:
        ctx = selection_context(self.env, i)
        ctx.cost_weight = None  # the original had no cost knob
        return self.index[self.selector.select(ctx).model]


def with_task(c: Classification, task: str) -> Classification:
    return Classification(tier=c.tier, score=c.score, backend=c.backend, task_type=task)


def cluster_labels(env: Env) -> tuple[np.ndarray, np.ndarray]:
    """(train labels, test labels) of spherical k-means fitted on train vectors, k chosen on train."""

    def make() -> tuple[np.ndarray, np.ndarray]:
        k = env.shared("clusters_k", lambda: choose_clusters(env.train_vecs, env.data.train.rewards))
        centroids = kmeans(env.train_vecs, k)
        return np.argmax(env.train_vecs @ centroids.T, axis=1), np.argmax(env.test_vecs @ centroids.T, axis=1)

    return env.shared("clusters", make)


class Thompson(Policy):
    """Our Layer 2 (layers/bandit/thompson.py) as the gateway runs it: tier contexts, tier prior."""

    name = "thompson"
    cost_aware = True
    learn = True
    fitted = False  # priors fitted on the train split (what `compass train` writes)
    clusters = False  # contexts = embedding clusters fitted on train, instead of the Layer 1 tier
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.step = 0.0
        opts: dict[str, Any] = {"seed": env.seed, "propensity_samples": 0, **self.options}
        self.cls = env.test_cls
        train_cls = env.train_cls
        if self.clusters:
            # One context per cluster: the tier part is a constant, so the prior is the same for all.
            opts["context"] = "tier_task"
            train_labels, test_labels = cluster_labels(env)
            self.cls = [
                with_task(Classification(tier="medium", score=0.0, backend="cluster"), f"c{k}")
                for k in test_labels
            ]
            train_cls = [
                with_task(Classification(tier="medium", score=0.0, backend="cluster"), f"c{k}")
                for k in train_labels
            ]
        if self.fitted:
            opts["priors_path"] = env.shared(f"priors:{self.name}", lambda: self._fit(train_cls, opts))
        self.selector = self.make_selector(opts)
        self.index = {m: k for k, m in enumerate(env.data.models)}
        self.contexts = [self.selector.context_of(c) for c in self.cls]

    def make_selector(self, opts: dict[str, Any]) -> ThompsonSelector:
        return ThompsonSelector(opts, self.env.data.specs, clock=lambda: self.step)

    def vector(self, i: int) -> Any:
        return None

    def _fit(self, train_cls: list[Classification], opts: dict[str, Any]) -> str:
        mode = opts.get("context", "tier")
        priors = fit_context_priors(train_cls, self.env.data.train.rewards, self.env.data.models, mode)
        path = self.env.workdir / f"priors_{self.name}.json"
        path.write_text(json.dumps(priors), encoding="utf-8")
        return str(path)

    def choose(self, i: int) -> int:
        ctx = selection_context(self.env, i, self.cls[i])
        ctx.embedding = self.vector(i)
        return self.index[self.selector.select(ctx).model]

    def update(self, i: int, arm: int, reward: float, step: int) -> None:
        self.step = float(step)
        if self.learn:
            self.selector.observe(
                RewardEvent(
                    request_id=str(i),
                    context=self.contexts[i],
                    model=self.env.data.models[arm],
                    reward=reward,
                    ts=float(step),
                    source="offline",
                    embedding=self.vector(i),
                )
            )


class Default(Thompson):
    """What the server runs by default (``selector.backend: neighbourhood``, default options, no
    train data): Thompson over each prompt's neighbourhood of rewarded requests, learning online."""

    name = "default"

    def make_selector(self, opts: dict[str, Any]) -> ThompsonSelector:
        return NeighbourhoodSelector(opts, self.env.data.specs, clock=lambda: self.step)

    def vector(self, i: int) -> Any:
        return self.env.test_vecs[i]


class DefaultTrained(Default):
    """The default with its memory built from the TRAIN split (what ``compass train --memory`` writes):
    every train prompt a prior row with all its models' rewards, then learning online."""

    name = "default_trained"
    uses_train = True
    train_columns: ClassVar[list[int] | None] = None  # models with train rows (None: all)

    def make_selector(self, opts: dict[str, Any]) -> ThompsonSelector:
        env, data = self.env, self.env.data
        # k as `compass train --memory` picks it: held-out error on the train split (kNN's k)
        k = env.shared("knn_k", lambda: choose_knn_k(env.train_vecs, data.train.rewards))
        selector = NeighbourhoodSelector({"k": k, **opts}, data.specs, clock=lambda: self.step)
        cols = list(range(len(data.models))) if self.train_columns is None else self.train_columns
        selector.prior_rows(env.train_vecs, [data.models[j] for j in cols], data.train.rewards[:, cols])
        return selector


class ThompsonPriorOnly(Thompson):
    """Layer 1 + the tier prior, never updated: what routing would be without Layer 2 learning."""

    name = "layer1_prior_no_learning"
    learn = False


class ThompsonFitted(Thompson):
    name = "thompson_fitted_prior"
    fitted = True
    uses_train = True


class ThompsonTaskFitted(Thompson):
    """Contexts tier:task_type from Layer 1, priors fitted on train (`compass train --context tier_task`)."""

    name = "thompson_tier_task_fitted"
    fitted = True
    uses_train = True
    options: ClassVar[dict[str, Any]] = {"context": "tier_task"}


class ThompsonClusterCold(Thompson):
    """Cluster contexts but a flat prior: how much the context alone helps online learning."""

    name = "thompson_cluster_cold"
    clusters = True
    uses_train = True  # the clusters (not the rewards) come from train


class ThompsonCluster(Thompson):
    name = "thompson_cluster_fitted"
    fitted = True
    clusters = True
    uses_train = True


class EpsilonGreedy(Policy):
    """Per-tier running means (one pseudo-observation at 0.5), explore with probability 0.1."""

    name = "epsilon_greedy"
    cost_aware = True
    epsilon = 0.1

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        m = len(env.data.models)
        self.sums = {t: np.full(m, 0.5) for t in ("simple", "medium", "complex")}
        self.counts = {t: np.ones(m) for t in ("simple", "medium", "complex")}

    def choose(self, i: int) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(len(self.env.data.models)))
        tier = self.env.test_cls[i].tier
        utility = self.sums[tier] / self.counts[tier] - self.env.cost_weight * self.env.norm_cost[i]
        return int(np.argmax(utility))

    def update(self, i: int, arm: int, reward: float, step: int) -> None:
        tier = self.env.test_cls[i].tier
        self.sums[tier][arm] += reward
        self.counts[tier][arm] += 1


class KNN(Policy):
    """kNN router: mean train reward of the k most similar TRAIN prompts (cosine, MiniLM), minus cost.

    k is chosen on a held-out fifth of the train split (lowest reward-prediction error), the
    same rule that picks the number of clusters for ``thompson_cluster_fitted``.
    """

    name = "knn_minilm"
    cost_aware = True
    uses_train = True

    def __init__(self, env: Env) -> None:
        super().__init__(env)

        def make() -> np.ndarray:
            k = env.shared("knn_k", lambda: choose_knn_k(env.train_vecs, env.data.train.rewards))
            return knn_estimates(env.test_vecs, env.train_vecs, env.data.train.rewards, k)

        self.estimate = env.shared("knn", make)

    def choose(self, i: int) -> int:
        return int(np.argmax(self.estimate[i] - self.env.cost_weight * self.env.norm_cost[i]))


POLICIES: list[type[Policy]] = [
    Cheapest,
    Best,
    RandomPolicy,
    Static,
    ThompsonPriorOnly,
    EpsilonGreedy,
    KNN,
    Default,
    DefaultTrained,
    Thompson,
    ThompsonFitted,
    ThompsonTaskFitted,
    ThompsonClusterCold,
    ThompsonCluster,
]
