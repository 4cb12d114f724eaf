"""What is learned offline, from a TRAIN split only: kNN estimates, clusters, Beta priors, and their k.

Both kNN and the cluster contexts have one knob (neighbours, clusters). Each is chosen by the
same rule, on a held-out fifth of the train split: the k whose per-model reward predictions
have the lowest squared error. The test split is never looked at.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.classifier.base import Classification

KNN_CHOICES = (5, 10, 25, 50, 100, 200)
CLUSTER_CHOICES = (8, 16, 32, 64, 128, 256)


def knn_estimates(test: np.ndarray, train: np.ndarray, rewards: np.ndarray, k: int) -> np.ndarray:
    """(test prompts, models) mean reward over each prompt's k nearest train prompts (cosine)."""
    k = max(1, min(k, len(train)))
    out = np.empty((len(test), rewards.shape[1]))
    for start in range(0, len(test), 1024):
        sims = test[start : start + 1024] @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(train) else np.argsort(-sims, axis=1)
        out[start : start + 1024] = rewards[top].mean(axis=1)
    return out


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Spherical k-means (k-means++-style seeding) on unit vectors; returns unit centroids."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    centroids = [x[rng.integers(len(x))]]
    best = 1.0 - x @ centroids[0]
    for _ in range(1, k):
        probs = np.maximum(best, 0.0)
        idx = rng.choice(len(x), p=probs / probs.sum()) if probs.sum() > 0 else rng.integers(len(x))
        centroids.append(x[idx])
        best = np.minimum(best, 1.0 - x @ x[idx])
    c = np.stack(centroids)
    for _ in range(iters):
        labels = np.argmax(x @ c.T, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        c = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), c)
    return c


def _holdout(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(n * 0.8))
    return order[:cut], order[cut:]


def choose_knn_k(vectors: np.ndarray, rewards: np.ndarray, choices: tuple[int, ...] = KNN_CHOICES) -> int:
    """k with the lowest held-out squared error of kNN reward predictions (train split only)."""
    fit, val = _holdout(len(vectors))
    errors = {
        k: float(np.mean((knn_estimates(vectors[val], vectors[fit], rewards[fit], k) - rewards[val]) ** 2))
        for k in choices
    }
    return min(errors, key=lambda k: (errors[k], k))


def cluster_means(labels: np.ndarray, rewards: np.ndarray, k: int) -> np.ndarray:
    """(k, models) per-cluster mean reward, smoothed by 2 pseudo-observations at the global mean."""
    sums = np.zeros((k, rewards.shape[1]))
    np.add.at(sums, labels, rewards)
    counts = np.bincount(labels, minlength=k)[:, None]
    return (sums + 2.0 * rewards.mean(axis=0)) / (counts + 2.0)


def choose_clusters(
    vectors: np.ndarray, rewards: np.ndarray, choices: tuple[int, ...] = CLUSTER_CHOICES
) -> int:
    """Number of clusters with the lowest held-out squared error of per-cluster mean rewards."""
    fit, val = _holdout(len(vectors))
    errors = {}
    for k in choices:
        centroids = kmeans(vectors[fit], k)
        means = cluster_means(np.argmax(vectors[fit] @ centroids.T, axis=1), rewards[fit], len(centroids))
        pred = means[np.argmax(vectors[val] @ centroids.T, axis=1)]
        errors[k] = float(np.mean((pred - rewards[val]) ** 2))
    return min(errors, key=lambda k: (errors[k], k))


def fit_priors(
    contexts: list[str], rewards: np.ndarray, models: list[str], cap: float | None = None
) -> dict[str, Any]:
    """Beta priors per context and model in the format ``ThompsonSelector._load_priors`` reads.

    alpha = 1 + w·mean, beta = 1 + w·(1 - mean): the Beta(1, 1) posterior after the context's
    n train rows, w = n (each train row counts as one observation, the Bayesian default). With
    ``cap``, w = min(cap, n), so live feedback can still move a posterior quickly when traffic
    differs from the benchmark.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    keys = np.array(contexts)
    for context in sorted(set(contexts)):
        rows = rewards[keys == context]
        n = float(len(rows))
        weight = n if cap is None else min(cap, n)
        mean = rows.mean(axis=0)
        out[context] = {
            m: {
                "alpha": float(1.0 + weight * mean[j]),
                "beta": float(1.0 + weight * (1.0 - mean[j])),
                "mean": float(mean[j]),
                "n": n,
            }
            for j, m in enumerate(models)
        }
    return {"format": "compass-priors/1", "cap": cap, "contexts": out}


def context_key(c: Classification, mode: str) -> str:
    """The context the live selector files a classification under (``ThompsonSelector.context_of``)."""
    return f"{c.tier}:{c.task_type or 'general'}" if mode == "tier_task" else c.tier


def fit_context_priors(
    cls: list[Classification], rewards: np.ndarray, models: list[str], mode: str, cap: float | None = None
) -> dict[str, Any]:
    """Priors per selector context; in ``tier_task`` mode plain-tier entries too, the selector's
    fallback for task types the train split never produced."""
    doc = fit_priors([context_key(c, mode) for c in cls], rewards, models, cap)
    if mode == "tier_task":
        doc["contexts"] = {
            **fit_priors([c.tier for c in cls], rewards, models, cap)["contexts"],
            **doc["contexts"],
        }
    return doc
