"""The Layer 1 interface: ``Classifier.classify(prompt) -> Classification``.

Implementations are registered in ``CLASSIFIER_CLS`` by name (as RouteLLM's ``ROUTER_CLS``) and
imported only when configured, so torch and transformers load only for backends that need them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import msgspec

from layers.registry import resolve
from layers.types import Prompt, Tier


class Classification(msgspec.Struct, kw_only=True):
    """What Layer 1 says about one prompt.

    ``score`` is the number the tier was cut from; ``scores`` holds every named score the backend
    produced (e.g. ``compass_complexity`` and ``prompt_complexity_score`` for the NVIDIA model).
    """

    tier: Tier
    score: float
    backend: str
    scores: dict[str, float] = {}
    task_type: str | None = None
    task_type_prob: float | None = None
    method: str = "classifier"
    latency_ms: float = 0.0
    details: dict[str, Any] = {}


class Classifier(abc.ABC):
    """A Layer 1 backend. Must never block the event loop: heavy work runs in a thread."""

    name: ClassVar[str] = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, warm up. Called once from the app's lifespan."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads and weights."""

    @abc.abstractmethod
    async def classify(self, prompt: Prompt) -> Classification:
        """Classify one prompt."""

    async def classify_texts(self, texts: list[str]) -> list[Classification]:
        """Classify raw texts (for ``/v1/classifications``); backends may batch this."""
        return [await self.classify(Prompt(t, approx_tokens=max(1, len(t) // 4))) for t in texts]

    def info(self) -> dict[str, Any]:
        """What ``/health`` shows about this backend."""
        return {"backend": self.name}


CLASSIFIER_CLS: dict[str, str] = {
    "length": "layers.classifier.length:LengthClassifier",
    "nvidia": "layers.classifier.nvidia:NvidiaClassifier",
    "routellm_bert": "layers.classifier.routellm_bert:RouteLLMBertClassifier",
    "remote": "layers.classifier.remote:RemoteClassifier",
    "embedding": "layers.classifier.embedding:EmbeddingClassifier",
}


def build_classifier(name: str, options: dict[str, Any], **services: Any) -> Classifier:
    """Construct the configured backend: ``cls(options, **services)``."""
    cls = resolve(CLASSIFIER_CLS, name, "classifier backend")
    return cls(options, **services)
