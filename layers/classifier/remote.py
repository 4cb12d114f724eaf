"""Layer 1 over HTTP: another LLM Compass (or any text-classification service) classifies for us.

Useful when one GPU box runs the heavy classifier for several gateways. Protocols:

* ``compass`` (default): the gateway's own ``POST /v1/classifications`` with ``{"inputs": [...]}``;
  each input gets ``[{"label": tier, "score", "details": <Classification>}, {"label": "task:..."}]``.
* ``hf``: Hugging Face Inference style text classification, ``[[{"label", "score"}, ...], ...]``;
  labels are tiers, or are mapped to tiers with the ``labels`` option.

Every failure (connection, timeout, non-200, malformed body) raises, so the gateway's fallback
classifier answers instead.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any
from urllib.parse import urlsplit

from layers.classifier.base import Classification, Classifier
from layers.types import TIERS, Prompt

DEFAULT_TIMEOUT_MS = 2000.0
COMPASS_PATH = "/v1/classifications"
TIER_VALUE = {"simple": 0.0, "medium": 0.5, "complex": 1.0}


class RemoteClassifierError(RuntimeError):
    """The remote service answered, but not with something usable."""


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RemoteClassifierError(f"{what} is not a number: {value!r}") from exc
    if not math.isfinite(number):
        raise RemoteClassifierError(f"{what} is not finite: {value!r}")
    return number


class RemoteClassifier(Classifier):
    """Options: ``url`` (required; a bare ``http://host:port`` gets ``/v1/classifications`` for the
    compass protocol), ``protocol`` compass|hf, ``timeout_ms``, ``headers``, ``api_key`` or
    ``api_key_env`` (sent as ``Authorization: Bearer``), ``labels`` (hf: label → tier),
    ``max_batch`` (texts per request, the gateway accepts 256), ``max_connections``.
    """

    name = "remote"

    def __init__(self, options: dict[str, Any] | None = None, **_: Any) -> None:
        options = options or {}
        url = options.get("url")
        if not url:
            raise ValueError("remote classifier needs options.url")
        self.protocol = str(options.get("protocol", "compass"))
        if self.protocol not in ("compass", "hf"):
            raise ValueError("remote classifier: protocol must be 'compass' or 'hf'")
        if self.protocol == "compass" and urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + COMPASS_PATH
        self.url = str(url)
        self.timeout_s = float(options.get("timeout_ms", DEFAULT_TIMEOUT_MS)) / 1000.0
        if self.timeout_s <= 0:
            raise ValueError("remote classifier: timeout_ms must be positive")
        self.headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
        api_key = options.get("api_key") or (
            os.environ.get(options["api_key_env"]) if options.get("api_key_env") else None
        )
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.labels = {str(k): str(v) for k, v in (options.get("labels") or {}).items()}
        bad = {v for v in self.labels.values() if v not in TIERS}
        if bad:
            raise ValueError(f"remote classifier: labels must map to tiers, not {sorted(bad)}")
        self.max_batch = int(options.get("max_batch", 64))
        self.max_connections = int(options.get("max_connections", 32))
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.max_connections),
            headers=self.headers,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, texts: list[str]) -> list[Any]:
        if self._session is None:
            raise RuntimeError("remote classifier used before start()")
        async with self._session.post(self.url, json={"inputs": texts}) as response:
            if response.status != 200:
                body = (await response.text())[:200]
                raise RemoteClassifierError(f"{self.url} answered {response.status}: {body}")
            data = await response.json(content_type=None)
        if isinstance(data, list) and len(texts) == 1 and data and isinstance(data[0], dict):
            data = [data]  # a service that unwraps single inputs
        if not isinstance(data, list) or len(data) != len(texts):
            raise RemoteClassifierError(
                f"{self.url} returned {type(data).__name__}, not one result per input"
            )
        return data

    def _parse(self, labels: Any, started: float) -> Classification:
        if not isinstance(labels, list) or not all(isinstance(x, dict) and "label" in x for x in labels):
            raise RemoteClassifierError("each result must be a list of {label, score} objects")
        task = next((x for x in labels if str(x["label"]).startswith("task:")), None)
        task_type = str(task["label"]).removeprefix("task:") if task else None
        task_prob = _finite(task.get("score", 0.0), "task score") if task else None
        latency = (time.perf_counter() - started) * 1000
        head = labels[0]
        if self.protocol == "compass" and isinstance(head.get("details"), dict):
            return self._from_compass(head, task_type, task_prob, latency)
        return self._from_hf(labels, task_type, task_prob, latency)

    def _from_compass(
        self, head: dict[str, Any], task_type: str | None, task_prob: float | None, latency: float
    ) -> Classification:
        remote = head["details"]
        tier = remote.get("tier", head["label"])
        if tier not in TIERS:
            raise RemoteClassifierError(f"remote tier {tier!r} is not one of {TIERS}")
        scores = {str(k): _finite(v, f"score {k}") for k, v in (remote.get("scores") or {}).items()}
        return Classification(
            tier=tier,
            score=_finite(remote.get("score", head.get("score")), "score"),
            backend=self.name,
            scores=scores,
            task_type=remote.get("task_type") or task_type,
            task_type_prob=remote.get("task_type_prob", task_prob),
            latency_ms=latency,
            details={
                **(remote.get("details") or {}),
                "remote_backend": remote.get("backend"),
                "remote_method": remote.get("method"),
                "remote_latency_ms": remote.get("latency_ms"),
            },
        )

    def _from_hf(
        self, labels: list[dict[str, Any]], task_type: str | None, task_prob: float | None, latency: float
    ) -> Classification:
        probs = dict.fromkeys(TIERS, 0.0)
        seen = False
        for item in labels:
            label = str(item["label"])
            if label.startswith("task:"):
                continue
            tier = self.labels.get(label, label if label in TIERS else None)
            if tier is None:
                raise RemoteClassifierError(f"label {label!r} maps to no tier; set options.labels")
            probs[tier] += _finite(item.get("score"), f"score of {label}")
            seen = True
        total = sum(probs.values())
        if not seen or total <= 0:
            raise RemoteClassifierError("no tier label with a positive score")
        probs = {t: p / total for t, p in probs.items()}
        score = sum(probs[t] * TIER_VALUE[t] for t in TIERS)
        return Classification(
            tier=max(TIERS, key=lambda t: probs[t]),
            score=score,
            backend=self.name,
            scores={"complexity": score, **{f"p_{t}": p for t, p in probs.items()}},
            task_type=task_type,
            task_type_prob=task_prob,
            latency_ms=latency,
            details={"protocol": "hf"},
        )

    async def classify(self, prompt: Prompt) -> Classification:
        started = time.perf_counter()
        (labels,) = await self._post([prompt.text])
        return self._parse(labels, started)

    async def classify_texts(self, texts: list[str]) -> list[Classification]:
        started = time.perf_counter()
        results: list[Classification] = []
        for i in range(0, len(texts), self.max_batch):
            chunk = list(texts[i : i + self.max_batch])
            results += [self._parse(labels, started) for labels in await self._post(chunk)]
        return results

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": self.url,
            "protocol": self.protocol,
            "timeout_ms": self.timeout_s * 1000,
        }
