"""RouteLLM's BERT router (``routellm/bert_gpt4_augmented``) as a Layer 1 backend.

The score is RouteLLM's own ``BERTRouter`` number, reproduced exactly: softmax over the three
logits, ``binary_prob`` = the sum of the last two (tie, weak model wins), strong win rate =
``1 - binary_prob``. RouteLLM routes to the strong model when that rate is at least its threshold;
here the rate is also cut into the three tiers. Weights are read from a local directory or the
Hugging Face cache (``resolve_model_dir``); fetching them is ``compass download-models``'s job.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any

import numpy as np

from layers.classifier.base import Classification, Classifier
from layers.classifier.batching import MicroBatcher
from layers.types import TIERS, Prompt

DEFAULT_REPO = "routellm/bert_gpt4_augmented"
DEFAULT_THRESHOLD = 0.5  # strong win rate at or above which RouteLLM picks the strong model
DEFAULT_MEDIUM_THRESHOLD = 0.25  # below it the prompt is "simple"


def strong_win_rate(logits: np.ndarray) -> np.ndarray:
    """RouteLLM ``BERTRouter``: ``1 - sum(softmax(logits)[-2:])`` per row."""
    logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    return 1.0 - probs[:, -2:].sum(axis=1)


def resolve_checkpoint(
    model: str,
    path: str | None = None,
    *,
    cache_dir: str | None = None,
    revision: str | None = None,
    allow_download: bool | None = None,
) -> str:
    """``path``, ``model`` when it is a directory, else the repo in the Hugging Face cache.

    The shared resolver downloads only when allowed (never under ``HF_HUB_OFFLINE``); otherwise its
    error names the repository, what is missing and ``compass download-models``.
    """
    if model.startswith(("http://", "https://")):
        raise ValueError(
            f"{model!r} is an HTTP endpoint; use classifier backend 'remote' for a classifier service"
        )
    from layers.classifier.download import resolve_model_dir

    folder = resolve_model_dir(
        model, path, allow_download=allow_download, cache_dir=cache_dir, revision=revision
    )
    return str(folder)


def _option(options: dict[str, Any], key: str, env: str, default: Any) -> Any:
    """Config option, then environment variable, then default."""
    if options.get(key) is not None:
        return options[key]
    value = os.environ.get(env)
    return value if value not in (None, "") else default


class RouteLLMBertClassifier(Classifier):
    """Options (environment variable in brackets; the option wins):

    ``model`` [ROUTELLM_BERT_URL] local checkpoint dir or HF repo id (``routellm/bert_gpt4_augmented``);
    ``path`` a local checkpoint directory (wins over ``model``); ``revision``, ``cache_dir``,
    ``allow_download`` as for the other backends (``layers.classifier.download.resolve_model_dir``);
    ``threshold`` [ROUTELLM_THRESHOLD] strong win rate at or above which the route is "strong" (tier complex);
    ``medium_threshold`` win rate below which the tier is simple (default 0.25);
    ``mapping`` [ROUTELLM_MAPPING] JSON object from "strong"/"weak", a tier or a label (LABEL_0..2) to a
    tier (overrides the tier) or a model name (``details["suggested_model"]``);
    ``fallback_model`` [ROUTELLM_FALLBACK_MODEL] suggested model when the route is "weak";
    ``device`` auto|cpu|cuda|mps, ``fp16`` (default on CUDA/MPS), ``max_batch``, ``max_wait_ms``.
    """

    name = "routellm_bert"

    def __init__(self, options: dict[str, Any] | None = None, **_: Any) -> None:
        options = options or {}
        self.model_ref = str(_option(options, "model", "ROUTELLM_BERT_URL", DEFAULT_REPO))
        self.threshold = float(_option(options, "threshold", "ROUTELLM_THRESHOLD", DEFAULT_THRESHOLD))
        self.medium_threshold = float(
            options.get("medium_threshold", min(DEFAULT_MEDIUM_THRESHOLD, self.threshold))
        )
        if not 0.0 <= self.medium_threshold <= self.threshold <= 1.0:
            raise ValueError("routellm_bert needs 0 <= medium_threshold <= threshold <= 1")
        mapping = _option(options, "mapping", "ROUTELLM_MAPPING", {})
        if isinstance(mapping, str):
            try:
                mapping = json.loads(mapping)
            except json.JSONDecodeError as exc:
                raise ValueError(f"ROUTELLM_MAPPING is not valid JSON: {exc}") from exc
        if not isinstance(mapping, dict):
            raise ValueError("ROUTELLM_MAPPING must be a JSON object (label -> model or tier)")
        self.mapping: dict[str, str] = {str(k): str(v) for k, v in mapping.items()}
        self.fallback_model: str | None = _option(options, "fallback_model", "ROUTELLM_FALLBACK_MODEL", None)
        self.device_option = str(options.get("device", "auto"))
        self.fp16_option = options.get("fp16")
        self.path = options.get("path")
        self.cache_dir = options.get("cache_dir")
        self.revision = options.get("revision")
        self.allow_download = options.get("allow_download")
        self.max_batch = int(options.get("max_batch", 32))
        self.max_wait_ms = float(options.get("max_wait_ms", 2.0))
        self.model_dir: str | None = None
        self.device = "cpu"
        self.dtype = "float32"
        self.labels: list[str] = []
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_length = 512
        self._batcher: MicroBatcher[np.ndarray] | None = None

    # -- loading -----------------------------------------------------------------------------

    def _pick_device(self) -> str:
        import torch

        if self.device_option != "auto":
            return self.device_option
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def load(self) -> None:
        """Blocking: resolve the checkpoint locally and load it (runs in a thread from ``start``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_dir = resolve_checkpoint(
            self.model_ref,
            self.path,
            cache_dir=self.cache_dir,
            revision=self.revision,
            allow_download=self.allow_download,
        )
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, num_labels=3)
        self.device = self._pick_device()
        fp16 = self.fp16_option if self.fp16_option is not None else self.device in ("cuda", "mps")
        if fp16:
            model = model.half()
        model = model.to(self.device).eval()
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        positions = getattr(model.config, "max_position_embeddings", 512) or 512
        self._max_length = int(min(tokenizer.model_max_length or 512, positions, 512))
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
        self._tokenizer, self._model = tokenizer, model

    def logits(self, texts: list[str]) -> np.ndarray:
        """Blocking forward pass: ``(len(texts), 3)`` float32 logits."""
        import torch

        inputs = self._tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self._max_length
        ).to(self.device)
        with torch.inference_mode():
            out = self._model(**inputs).logits
        return out.float().cpu().numpy()

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self._batcher = MicroBatcher(
            lambda texts: list(self.logits(texts)), self.max_batch, self.max_wait_ms, name="routellm"
        )
        await self._batcher.run(["warm up"])  # first call pays lazy init, not a request

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self._model = self._tokenizer = None

    # -- scoring ------------------------------------------------------------------------------

    def tier_for(self, win_rate: float) -> str:
        if win_rate >= self.threshold:
            return "complex"
        return "medium" if win_rate >= self.medium_threshold else "simple"

    def _result(self, logits: np.ndarray, started: float) -> Classification:
        win = float(strong_win_rate(logits)[0])
        if not math.isfinite(win):
            raise ValueError("routellm_bert produced a non-finite score")
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        label = self.labels[int(np.argmax(logits))] if self.labels else f"LABEL_{int(np.argmax(logits))}"
        route = "strong" if win >= self.threshold else "weak"
        tier = self.tier_for(win)
        mapped = next((self.mapping[k] for k in (route, tier, label) if k in self.mapping), None)
        suggested = None
        if mapped in TIERS:
            tier = mapped
        else:
            suggested = mapped
        if route == "weak" and self.fallback_model:
            suggested = self.fallback_model
        return Classification(
            tier=tier,  # type: ignore[arg-type]
            score=win,
            backend=self.name,
            scores={"strong_win_rate": win, **{f"p_label_{i}": float(p) for i, p in enumerate(probs)}},
            latency_ms=(time.perf_counter() - started) * 1000,
            details={
                "strong_win_rate": win,
                "route": route,
                "label": label,
                "threshold": self.threshold,
                "suggested_model": suggested,
            },
        )

    async def classify(self, prompt: Prompt) -> Classification:
        if self._batcher is None:
            raise RuntimeError("routellm_bert used before start()")
        started = time.perf_counter()
        logits = await self._batcher.submit(prompt.text)
        return self._result(np.asarray(logits), started)

    async def classify_texts(self, texts: list[str]) -> list[Classification]:
        if self._batcher is None:
            raise RuntimeError("routellm_bert used before start()")
        if not texts:
            return []
        started = time.perf_counter()
        rows: list[np.ndarray] = []
        for i in range(0, len(texts), self.max_batch):
            rows += await self._batcher.run(list(texts[i : i + self.max_batch]))
        return [self._result(np.asarray(row), started) for row in rows]

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_ref,
            "model_dir": self.model_dir,
            "device": self.device,
            "dtype": self.dtype,
            "threshold": self.threshold,
            "medium_threshold": self.medium_threshold,
            "fallback_model": self.fallback_model,
        }
