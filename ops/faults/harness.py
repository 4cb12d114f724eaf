"""Shared plumbing for the reliability harness: pools, SSE parsing, error-shape checks, RSS, verdicts.

Used by ``ops.load``, ``ops.faults``, ``ops.crash`` and ``tests/test_reliability.py``, so every
one of them judges "an OpenAI error body" and "a finished stream" the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.fake_upstream import FakeModelBehaviour, FakeUpstreamConfig

# name → (tier, input $/Mtok, output $/Mtok): the demo pool's shape with fake-upstream backends.
POOL_SHAPE: dict[str, tuple[str, float, float]] = {
    "demo-small": ("simple", 0.1, 0.4),
    "demo-medium": ("medium", 1.0, 4.0),
    "demo-large": ("complex", 10.0, 40.0),
}
ADMIN_KEY = "sk-compass-reliability-admin"


def realistic_config(seed: int | None = 7, speedup: float = 1.0) -> FakeUpstreamConfig:
    """Latencies like hosted models (first token 0.1-0.4 s, 40-120 tokens/s), ``speedup`` to shorten."""
    shape = {
        "demo-small": (120.0, 120.0, 40, 0.55),
        "demo-medium": (220.0, 80.0, 60, 0.75),
        "demo-large": (400.0, 50.0, 80, 0.9),
    }
    return FakeUpstreamConfig(
        seed=seed,
        models={
            name: FakeModelBehaviour(
                latency_ms=latency / speedup,
                tokens_per_s=rate * speedup,
                completion_tokens=tokens,
                quality=quality,
            )
            for name, (latency, rate, tokens, quality) in shape.items()
        },
    )


def pool_for(api_base: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Pool entries for ``compass.yaml`` that point at the fake upstream (direct OpenAI path)."""
    return [
        {
            "name": name,
            "litellm_model": f"openai/{name}",
            "api_base": api_base,
            "api_key": "k",
            "tier": tier,
            "input_price_per_mtok": p_in,
            "output_price_per_mtok": p_out,
            "timeout_s": timeout_s,
        }
        for name, (tier, p_in, p_out) in POOL_SHAPE.items()
    ]


def gateway_config(
    api_base: str,
    timeout_s: float = 60.0,
    fast_layers: bool = True,
    admin_key: str | None = None,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """A gateway config; ``fast_layers`` uses the length classifier and no cache (no model load)."""
    config: dict[str, Any] = {"models": pool_for(api_base, timeout_s)}
    if fast_layers:
        config["classifier"] = {"backend": "length"}
        config["cache"] = {"enabled": False}
    if admin_key:
        config["security"] = {"admin_key": admin_key}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def is_openai_error(body: Any) -> bool:
    """``{"error": {"message": str, "type": str, "code": ...}}`` as OpenAI's API returns it."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    return (
        isinstance(error.get("message"), str)
        and bool(error["message"])
        and isinstance(error.get("type"), str)
        and "code" in error
    )


def json_or_none(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


@dataclass
class StreamOutcome:
    """What a client saw on one streamed answer."""

    request_id: str | None = None
    chunks: int = 0
    done: bool = False
    error: dict[str, Any] | None = None
    text: str = ""


def read_stream(text: str) -> StreamOutcome:
    outcome = StreamOutcome()
    for data in sse_data(text):
        if data == "[DONE]":
            outcome.done = True
            continue
        event = json_or_none(data)
        if not isinstance(event, dict):
            continue
        if "error" in event:
            outcome.error = event
            continue
        outcome.chunks += 1
        outcome.request_id = outcome.request_id or event.get("id")
        for choice in event.get("choices") or []:
            outcome.text += (choice.get("delta") or {}).get("content") or ""
    return outcome


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (psutil when installed, else ``/proc``)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss // 1024)
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t_s, value)`` samples, per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


@dataclass
class Verdict:
    """One named check of a scenario: pass/fail plus the figures behind it."""

    name: str
    passed: bool
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    def line(self) -> str:
        mark = "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")
        return f"[{mark}] {self.name}: {self.detail}"


def admin_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def home_dir(prefix: str) -> Path:
    """A fresh directory for one run's gateway home (under $TMPDIR, never in the repository)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"compass-{prefix}-"))


def loopback_only(url: str) -> None:
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"the reliability harness only sends traffic to loopback, not {url}")


def env_offline() -> dict[str, str]:
    """Environment for child gateways: no Hub, LiteLLM's local cost map."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
