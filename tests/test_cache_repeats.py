"""Exact repeats hit, whatever Layer 2 draws: a real gateway process, Thompson sampling, the fake upstream.

Before, the cache compared an entry with the model Layer 2 had just *sampled* for the repeat, so
a draw of a bigger model turned down the answer that was right there (5 of 20 repeats missed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from layers.cache.keys import required_capability
from layers.types import ModelSpec
from ops.fake_upstream import FakeUpstream
from ops.procs import GatewayProcess
from tests.helpers import demo_pool

PROMPTS = [
    "What is the boiling point of water at sea level?",
    "Write a haiku about autumn leaves.",
    "Prove that there are infinitely many primes and discuss the proof's history.",
]
REPEATS = 21
START_S = 300  # the MiniLM loads at start; two shared cores can take minutes


def config(upstream: FakeUpstream) -> dict[str, object]:
    return {
        "models": demo_pool(upstream),
        "selector": {"backend": "thompson"},
        "cache": {"enabled": True},
        "storage": {"flush_interval_ms": 5},
    }


@contextlib.contextmanager
def stopping(gateway: GatewayProcess) -> Iterator[GatewayProcess]:
    """A started gateway, stopped on leaving (``with GatewayProcess`` would start it with 90 s)."""
    try:
        yield gateway
    finally:
        gateway.stop()


def ask(client: httpx.Client, text: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def test_every_exact_repeat_hits_including_the_first_after_a_restart(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(tmp_path / "home", config(upstream)).start(timeout_s=START_S)
    rank = {m["name"]: i for i, m in enumerate(demo_pool(upstream))}
    stronger_draws = 0
    with stopping(gateway), httpx.Client(base_url=gateway.url, timeout=60) as client:
        sources = {}
        for text in PROMPTS:
            first = ask(client, text)
            assert first.headers["x-compass-cache"] == "miss"
            sources[text] = first.json()["model"]
            for _ in range(REPEATS):
                repeat = ask(client, text)
                assert repeat.headers["x-compass-cache"] == "exact", repeat.json()["routing"]
                routing = repeat.json()["routing"]
                assert routing["cache"]["source_model"] == sources[text]
                stronger_draws += rank.get(routing.get("model"), -1) > rank[sources[text]]
        entries = client.get("/admin/api/cache").json()["entries"]
        assert entries == len(PROMPTS)
    # A restart reloads the entries and the bandit: the very first repeat hits.
    again = GatewayProcess(tmp_path / "home", config(upstream)).start(timeout_s=START_S)
    with stopping(again), httpx.Client(base_url=again.url, timeout=60) as client:
        for text in PROMPTS:
            repeat = ask(client, text)
            assert repeat.headers["x-compass-cache"] == "exact"
            assert repeat.json()["routing"]["cache"]["source_model"] == sources[text]
        # A disliked answer is evicted: the next repeat goes upstream.
        disliked = ask(client, PROMPTS[0])
        feedback = client.post("/feedback", json={"id": disliked.json()["id"], "thumbs": "down"})
        assert feedback.status_code == 200, feedback.text
        assert ask(client, PROMPTS[0]).headers["x-compass-cache"] == "miss"
    print(f"{stronger_draws} of {len(PROMPTS) * REPEATS} repeats drew a stronger model than the entry's")


def test_the_bar_depends_on_the_request_not_on_the_draw() -> None:
    pool = [
        ModelSpec(name="s", litellm_model="openai/s", tier="simple"),
        ModelSpec(name="m", litellm_model="openai/m", tier="medium"),
        ModelSpec(name="l", litellm_model="openai/l", tier="complex"),
    ]
    # Routed: the same bar whichever model Layer 2 drew this time.
    assert {required_capability(chosen, True, pool) for chosen in pool} == {0.0}
    assert required_capability(pool[2], True, pool[1:]) == 1.0  # compass.candidates narrows it
    # A named model: answers at least as capable as that model.
    assert required_capability(pool[2], False, [pool[2]]) == 2.0
