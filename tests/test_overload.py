"""Overload: the embedder's backlog is bounded, and Layers 1 and 3 shed work instead of queueing it.

Without the bound, background cache stores and Layer 1's shielded embeddings pile up behind a
saturated embedder and memory grows for as long as the load lasts (seen in ``ops.load``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from layers.embedding import Embedder
from layers.types import EmbedderBusy
from tests.helpers import MOCK_POOL, make_settings

CHAT = "/v1/chat/completions"


class BlockedEncoder:
    """Stands in for ``Embedder.encode`` until released, so the queue behind it can be filled."""

    def __init__(self, dim: int = 384) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.dim = dim

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.started.set()
        self.release.wait(10)
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)


async def test_a_full_backlog_is_refused_at_once_and_what_was_queued_still_completes() -> None:
    embedder = Embedder(max_queue=2, max_wait_ms=0.0)
    blocked = BlockedEncoder()
    embedder.encode = blocked  # type: ignore[method-assign]
    try:
        running = asyncio.ensure_future(embedder.embed(["in the encoder"]))
        while not blocked.started.is_set():  # the first text is being encoded, the queue is empty
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(embedder.embed([f"queued {i}"])) for i in range(2)]
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(EmbedderBusy):
            await embedder.embed(["one too many"])
        assert time.perf_counter() - started < 0.1 and embedder.rejected == 1
        blocked.release.set()
        vectors = await asyncio.wait_for(asyncio.gather(running, *queued), 10)
        assert [v.shape for v in vectors] == [(1, 384)] * 3
        assert (await embedder.embed(["after the backlog drained"])).shape == (1, 384)
    finally:
        blocked.release.set()
        await embedder.close()


async def test_texts_that_queue_during_a_batch_share_the_next_one() -> None:
    """Continuous batching (no window by default): a lone text goes at once, and everything that
    queued while it was encoded goes together in the next forward pass."""
    embedder = Embedder()
    assert embedder.max_wait_s == 0.0
    blocked = BlockedEncoder()
    sizes: list[int] = []

    def recording(texts: list[str], batch_size: int = 64) -> np.ndarray:
        sizes.append(len(texts))
        return blocked(texts, batch_size)

    embedder.encode = recording  # type: ignore[method-assign]
    try:
        first = asyncio.ensure_future(embedder.embed(["alone"]))
        while not blocked.started.is_set():
            await asyncio.sleep(0.005)
        followers = [asyncio.ensure_future(embedder.embed([f"follower {i}"])) for i in range(5)]
        await asyncio.sleep(0.01)
        blocked.release.set()
        vectors = await asyncio.wait_for(asyncio.gather(first, *followers), 10)
        assert sizes == [1, 5] and [v.shape for v in vectors] == [(1, 384)] * 6
    finally:
        blocked.release.set()
        await embedder.close()


def wait_for(client: TestClient, counter: str, value: int) -> dict[str, Any]:
    """Cache writes run after the response: poll ``/admin/api/cache`` until ``counter`` gets there."""
    deadline = time.monotonic() + 10
    while (stats := client.get("/admin/api/cache").json())[counter] < value:
        assert time.monotonic() < deadline, f"cache {counter} never reached {value}"
        time.sleep(0.02)
    return stats


def ask(client: TestClient, text: str) -> Any:
    return client.post(CHAT, json={"messages": [{"role": "user", "content": text}], "temperature": 0})


def test_gateway_sheds_embedding_work_when_the_embedder_is_busy(tmp_path: Path) -> None:
    """Layer 1 falls back (method says ``busy``), the lookup is a miss, the store is skipped."""
    layers = {"classifier.backend": "embedding", "cache.enabled": True}
    settings = make_settings(tmp_path, MOCK_POOL, **layers)
    mock = MockUpstream()
    services = build_services(settings, upstream=mock)
    question = "How do I reverse a list in Python?"
    with TestClient(create_app(settings, services)) as client:
        mock.enqueue("Paris.")
        first = ask(client, "What is the capital of France?")
        assert first.json()["routing"]["method"].startswith("classifier")
        wait_for(client, "entries", 1)  # a non-empty cache: lookups embed the question

        services.embedder.max_queue = 0  # every new embedding is refused, as under overload
        mock.enqueue("Use reversed().")
        shed = ask(client, question)
        assert shed.status_code == 200
        assert shed.json()["choices"][0]["message"]["content"] == "Use reversed()."
        assert shed.json()["routing"]["method"].startswith("fallback:busy")
        assert shed.headers["x-compass-cache"] == "miss"
        stats = wait_for(client, "store_skipped_busy", 1)
        assert stats["embed_busy"] == 1 and stats["entries"] == 1 and stats["stores"] == 1
        embedder = client.get("/health").json()["layers"]["embedder"]
        assert embedder["loaded"] and embedder["max_queue"] == 0 and embedder["rejected"] >= 2

        services.embedder.max_queue = 256  # load gone: the same question is classified and stored
        mock.enqueue("Use reversed() or slicing.")
        assert ask(client, question).json()["routing"]["method"].startswith("classifier")
        wait_for(client, "entries", 2)
        again = ask(client, question)
        assert again.headers["x-compass-cache"] == "exact" and len(mock.history) == 3
