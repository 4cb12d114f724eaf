"""The offline default Layer 1: two linear heads (tier, task type) over the MiniLM embedding.

The heads were fitted offline (``ops/scripts/build_classifier_data.py``) on labelled prompts from
Apache/MIT data sets; the weights ship in ``data/classifier/embedding_head.npz`` (a few KB). At
serving time the only heavy step is the embedding, which the semantic cache reuses through
``Prompt.embedding()``, so classification itself adds a matrix-vector product.
"""

from __future__ import annotations

import math
import os
import re
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
# Expected complexity: simple counts 0, medium 0.5, complex 1 (the score averages it with the demand head).
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


# Lettered options on three or more lines: a closed multiple-choice item. The routing outcomes show
# cheap models answering such items well, so the demand head gets this as a feature of its own.
_OPTION = re.compile(r"^\s*\(?[A-Da-d][.)]\s", re.MULTILINE)


def choice_feature(text: str) -> float:
    return 1.0 if len(_OPTION.findall(text)) >= 3 else 0.0


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
            # Optional demand head (a binary logistic head: does the prompt demand more than a cheap
            # model?) and its floor: a `simple` prompt at or above it is raised to `medium`.
            self.demand_w = data["demand_W"].astype(np.float32).reshape(-1) if "demand_W" in data else None
            self.demand_b = float(data["demand_b"]) if "demand_b" in data else 0.0
            self.demand_floor = float(data["demand_floor"]) if "demand_floor" in data else None
        if self.tiers != list(TIERS):
            raise ValueError(f"{path}: tier labels {self.tiers} do not match {list(TIERS)}")
        width = self.embed_dim + len(self.feat_mean)
        if self.tier_w.shape != (3, width) or self.task_w.shape != (len(self.tasks), width):
            raise ValueError(f"{path}: weight shapes do not match {width} features")
        if self.demand_w is not None and self.demand_w.shape != (width + 1,):
            raise ValueError(f"{path}: demand head has {self.demand_w.shape} weights, expected {width + 1}")

    def features(self, vectors: np.ndarray, texts: list[str]) -> np.ndarray:
        if vectors.shape[1] != self.embed_dim:
            raise ValueError(f"embedding has {vectors.shape[1]} dims, the head expects {self.embed_dim}")
        extra = (np.stack([length_features(t) for t in texts]) - self.feat_mean) / self.feat_scale
        return np.hstack([vectors.astype(np.float32), extra])

    def predict(self, vectors: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tier_probs, task_probs)`` for a batch of embeddings and their texts."""
        x = self.features(vectors, texts)
        return softmax(x @ self.tier_w.T + self.tier_b), softmax(x @ self.task_w.T + self.task_b)

    def demand(self, vectors: np.ndarray, texts: list[str]) -> np.ndarray | None:
        """P(the prompt is demanding) per text, or None when the weights have no demand head."""
        if self.demand_w is None:
            return None
        x = self.features(vectors, texts)
        x = np.hstack([x, np.array([[choice_feature(t)] for t in texts], dtype=np.float32)])
        return 1.0 / (1.0 + np.exp(-(x @ self.demand_w + self.demand_b)))

    def decide(
        self, tier_p: np.ndarray, demand: np.ndarray | None, floor: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Argmax tiers (a `simple` one raised to `medium` at ``demand >= floor``) and the score:
        the expected complexity, averaged with the demand probability when there is one."""
        tiers = tier_p.argmax(-1)
        expected = tier_p @ TIER_VALUE
        if demand is None:
            return tiers, expected
        if floor is not None:
            tiers = np.where((tiers == 0) & (demand >= floor), 1, tiers)
        return tiers, 0.5 * expected + 0.5 * demand


class EmbeddingClassifier(Classifier):
    """Tier = the most likely tier, floored to medium by the demand head; score = mean of the expected
    complexity and the demand probability (expected complexity alone without a demand head); task
    type = argmax of the task head.

    Options: ``weights_path`` (default: the shipped file); ``thresholds`` ([simple/medium,
    medium/complex] cut points on the score) or ``decision: thresholds`` (the cut points tuned when
    the heads were fitted) to cut the score instead of taking the argmax. On the held-out split the
    argmax is the better rule (``data/classifier/metrics.json``), so it is the default.
    ``demand_floor``: a `simple` prompt whose demand probability reaches it becomes `medium`
    (default: the floor calibrated at build time; ``off`` disables it; lower = fewer demanding
    prompts left in `simple`, at some routing-outcome accuracy).
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
        floor = options.get("demand_floor", "default")
        if floor not in ("default", "off", None) and not 0.0 <= float(floor) <= 1.0:
            raise ValueError("embedding classifier: demand_floor must be in [0, 1], 'off' or unset")
        self._floor_option = floor
        self.demand_floor: float | None = None
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
        if self._floor_option == "default":
            self.demand_floor = self.head.demand_floor
        elif self._floor_option not in ("off", None):
            self.demand_floor = float(self._floor_option)

    def _result(
        self, tier_p: np.ndarray, task_p: np.ndarray, demand: float | None, started: float, embed_ms: float
    ) -> Classification:
        assert self.head is not None
        d = None if demand is None else np.array([demand])
        tiers, scores_ = self.head.decide(tier_p[None, :], d, self.demand_floor)
        score = float(scores_[0])
        if self.decision == "argmax":
            tier = TIERS[int(tiers[0])]
        else:
            lo, hi = self.thresholds
            tier = TIERS[0] if score < lo else TIERS[1] if score < hi else TIERS[2]
        task = int(task_p.argmax())
        scores = {"complexity": score, **{f"p_{t}": float(p) for t, p in zip(TIERS, tier_p, strict=True)}}
        if demand is not None:
            scores["demand"] = float(demand)
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
        demand = self.head.demand(vector[None, :], [prompt.text])
        return self._result(
            tier_p[0], task_p[0], None if demand is None else float(demand[0]), started, embed_ms
        )

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
        demand = self.head.demand(vectors, list(texts))
        return [
            self._result(
                tier_p[i], task_p[i], None if demand is None else float(demand[i]), started, embed_ms
            )
            for i in range(len(texts))
        ]

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights_path": self.weights_path,
            "decision": self.decision,
            "thresholds": list(self.thresholds) if self.decision == "thresholds" else None,
            "task_types": self.head.tasks if self.head else None,
            "demand_floor": self.demand_floor,
        }
