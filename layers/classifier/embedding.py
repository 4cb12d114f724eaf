"""The offline default Layer 1: two linear heads (tier, task type) over the MiniLM embedding.

The heads were fitted offline (``ops/scripts/build_classifier_data.py``) on labelled prompts from
Apache/MIT data sets; the weights ship in ``data/classifier/embedding_head.npz`` (a few KB). At
serving time the only heavy step is the embedding, which the semantic cache reuses through
``Prompt.embedding()``, so classification itself adds a matrix-vector product.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from layers.classifier.base import Classification, Classifier
from layers.types import TIERS, Prompt

WEIGHTS_FILE = "embedding_head.npz"
# Where the shipped weights live: ``$COMPASS_CLASSIFIER_DATA`` if set, the source checkout, then
# ``data/classifier`` under the working directory (for an image that copies it next to the server).
_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "data" / "classifier",
    Path("data") / "classifier",
)
# The score is the expected complexity: simple counts 0, medium 0.5, complex 1.
TIER_VALUE = np.array([0.0, 0.5, 1.0], dtype=np.float32)


def default_weights_path() -> Path:
    """The first existing shipped weights file; a clear error names where it looked."""
    dirs = list(_CANDIDATES)
    if env := os.environ.get("COMPASS_CLASSIFIER_DATA"):
        dirs.insert(0, Path(env))
    for folder in dirs:
        if (folder / WEIGHTS_FILE).is_file():
            return folder / WEIGHTS_FILE
    looked = ", ".join(str(d / WEIGHTS_FILE) for d in dirs)
    raise FileNotFoundError(
        f"embedding classifier weights not found (looked in {looked}); set classifier.options.weights_path "
        "or rebuild them with `python -m ops.scripts.build_classifier_data`"
    )


def length_features(text: str) -> np.ndarray:
    """Cheap cues MiniLM cannot see: it truncates at 256 word pieces, so long prompts look short."""
    return np.array([math.log1p(len(text)), math.log1p(text.count("\n"))], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class EmbeddingHead:
    """The fitted weights: numpy only, safe to call from any thread."""

    def __init__(self, path: str | Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.tier_w = data["tier_W"].astype(np.float32)
            self.tier_b = data["tier_b"].astype(np.float32)
            self.task_w = data["task_W"].astype(np.float32)
            self.task_b = data["task_b"].astype(np.float32)
            self.tiers = [str(t) for t in data["tiers"]]
            self.tasks = [str(t) for t in data["tasks"]]
            self.feat_mean = data["feat_mean"].astype(np.float32)
            self.feat_scale = data["feat_scale"].astype(np.float32)
            self.thresholds = tuple(float(t) for t in data["thresholds"])
            self.embed_dim = int(data["embed_dim"])
        if self.tiers != list(TIERS):
            raise ValueError(f"{path}: tier labels {self.tiers} do not match {list(TIERS)}")
        width = self.embed_dim + len(self.feat_mean)
        if self.tier_w.shape != (3, width) or self.task_w.shape != (len(self.tasks), width):
            raise ValueError(f"{path}: weight shapes do not match {width} features")

    def features(self, vectors: np.ndarray, texts: list[str]) -> np.ndarray:
        if vectors.shape[1] != self.embed_dim:
            raise ValueError(f"embedding has {vectors.shape[1]} dims, the head expects {self.embed_dim}")
        extra = (np.stack([length_features(t) for t in texts]) - self.feat_mean) / self.feat_scale
        return np.hstack([vectors.astype(np.float32), extra])

    def predict(self, vectors: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tier_probs, task_probs)`` for a batch of embeddings and their texts."""
        x = self.features(vectors, texts)
        return softmax(x @ self.tier_w.T + self.tier_b), softmax(x @ self.task_w.T + self.task_b)


class EmbeddingClassifier(Classifier):
    """Tier = the most likely tier; score = expected complexity; task type = argmax of the task head.

    Options: ``weights_path`` (default: the shipped file); ``thresholds`` ([simple/medium,
    medium/complex] cut points on the score) or ``decision: thresholds`` (the cut points tuned when
    the heads were fitted) to cut the score instead of taking the argmax. On the held-out split the
    argmax is the better rule (``data/classifier/metrics.json``), so it is the default.
    Needs the gateway's ``embedder`` service (or a prompt that carries its own embed function).
    """

    name = "embedding"

    def __init__(self, options: dict[str, Any] | None = None, embedder: Any = None, **_: Any) -> None:
        options = options or {}
        self.embedder = embedder
        self.weights_path = options.get("weights_path")
        self._thresholds_option = options.get("thresholds")
        self.decision = str(options.get("decision", "thresholds" if self._thresholds_option else "argmax"))
        if self.decision not in ("argmax", "thresholds"):
            raise ValueError("embedding classifier: decision must be 'argmax' or 'thresholds'")
        self.head: EmbeddingHead | None = None
        self.thresholds: tuple[float, float] = (1 / 3, 2 / 3)

    async def start(self) -> None:
        path = Path(self.weights_path) if self.weights_path else default_weights_path()
        self.head = EmbeddingHead(path)
        self.weights_path = str(path)
        lo, hi = self._thresholds_option or self.head.thresholds
        if not 0.0 <= float(lo) < float(hi) <= 1.0:
            raise ValueError("embedding classifier needs thresholds 0 <= simple/medium < medium/complex <= 1")
        self.thresholds = (float(lo), float(hi))

    def _result(
        self, tier_p: np.ndarray, task_p: np.ndarray, started: float, embed_ms: float
    ) -> Classification:
        assert self.head is not None
        score = float(tier_p @ TIER_VALUE)
        if self.decision == "argmax":
            tier = TIERS[int(tier_p.argmax())]
        else:
            lo, hi = self.thresholds
            tier = TIERS[0] if score < lo else TIERS[1] if score < hi else TIERS[2]
        task = int(task_p.argmax())
        scores = {"complexity": score, **{f"p_{t}": float(p) for t, p in zip(TIERS, tier_p, strict=True)}}
        return Classification(
            tier=tier,
            score=score,
            backend=self.name,
            scores=scores,
            task_type=self.head.tasks[task],
            task_type_prob=float(task_p[task]),
            latency_ms=(time.perf_counter() - started) * 1000,
            details={"embed_ms": round(embed_ms, 3), "decision": self.decision},
        )

    async def classify(self, prompt: Prompt) -> Classification:
        if self.head is None:
            raise RuntimeError("embedding classifier used before start()")
        started = time.perf_counter()
        if prompt.has_embedder:
            vector = await prompt.embedding()  # shared with the semantic cache: computed once
        elif self.embedder is not None:
            vector = (await self.embedder.embed([prompt.text]))[0]
            prompt.set_embedding(vector)
        else:
            raise RuntimeError("embedding classifier has no embedder")
        embed_ms = (time.perf_counter() - started) * 1000
        tier_p, task_p = self.head.predict(vector[None, :], [prompt.text])
        return self._result(tier_p[0], task_p[0], started, embed_ms)

    async def classify_texts(self, texts: list[str]) -> list[Classification]:
        """One embedding batch for all texts, then one matrix product."""
        if self.head is None:
            raise RuntimeError("embedding classifier used before start()")
        if self.embedder is None:
            raise RuntimeError("embedding classifier has no embedder")
        if not texts:
            return []
        started = time.perf_counter()
        vectors = await self.embedder.embed(list(texts))
        embed_ms = (time.perf_counter() - started) * 1000
        tier_p, task_p = self.head.predict(vectors, list(texts))
        return [self._result(tier_p[i], task_p[i], started, embed_ms) for i in range(len(texts))]

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights_path": self.weights_path,
            "decision": self.decision,
            "thresholds": list(self.thresholds) if self.decision == "thresholds" else None,
            "task_types": self.head.tasks if self.head else None,
        }
