"""The baseline classifier of the original LLM Compass: tier from the prompt's token length.

It needs no weights and costs microseconds, so it is also the fallback when a heavier backend
errors or exceeds its time budget.
"""

from __future__ import annotations

import time
from typing import Any

from layers.classifier.base import Classification, Classifier
from layers.types import Prompt

# The original's rule: short prompts are simple, long ones complex.
DEFAULT_SIMPLE_MAX_TOKENS = 64
DEFAULT_COMPLEX_MIN_TOKENS = 512


class LengthClassifier(Classifier):
    name = "length"

    def __init__(self, options: dict[str, Any] | None = None, **_: Any) -> None:
        options = options or {}
        self.simple_max = int(options.get("simple_max_tokens", DEFAULT_SIMPLE_MAX_TOKENS))
        self.complex_min = int(options.get("complex_min_tokens", DEFAULT_COMPLEX_MIN_TOKENS))
        if not 0 < self.simple_max < self.complex_min:
            raise ValueError("length classifier needs 0 < simple_max_tokens < complex_min_tokens")

    def classify_tokens(self, tokens: int) -> Classification:
        start = time.perf_counter()
        if tokens <= self.simple_max:
            tier = "simple"
        elif tokens < self.complex_min:
            tier = "medium"
        else:
            tier = "complex"
        score = min(1.0, tokens / self.complex_min)
        return Classification(
            tier=tier,
            score=score,
            backend=self.name,
            scores={"length_score": score},
            latency_ms=(time.perf_counter() - start) * 1000,
            details={"tokens": tokens},
        )

    async def classify(self, prompt: Prompt) -> Classification:
        return self.classify_tokens(prompt.approx_tokens)
