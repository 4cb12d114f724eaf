"""Layer 3: ``SemanticCache`` on a real DuckDB and the real MiniLM, then through the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.storage.db import Database
from compass.upstream.mock import MockUpstream
from layers.cache.base import CacheHit, build_cache, build_index
from layers.cache.index import deleted_path
from layers.cache.keys import is_cacheable, make_cache_key
from layers.cache.semantic import SemanticCache
from layers.embedding import Embedder
from layers.types import Prompt
from tests.helpers import MOCK_POOL, make_settings

CHAT = "/v1/chat/completions"
LEARN = "How do I reverse a list in Python?"
LEARN_PARAPHRASE = "How can I reverse a Python list?"  # cosine 0.98 with LEARN under MiniLM


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder()
    model.load()
    return model


@pytest.fixture(scope="module")
def embed(embedder: Embedder) -> Any:
    """The real MiniLM, memoised per text (tests ask the same questions many times)."""
    memo: dict[str, np.ndarray] = {}

    async def embed_texts(texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in memo]
        if missing:
            memo.update(zip(missing, embedder.encode(missing), strict=True))
        return np.stack([memo[t] for t in texts])

    return embed_texts


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "compass.duckdb")
    database.open()
    yield database
    database.close()


class Harness:
    """A cache plus helpers to ask and answer as the gateway would."""

    def __init__(self, db: Database, embed: Any, path: Path, **options: Any) -> None:
        self.db, self.embed, self.path, self.options = db, embed, path, options
        self.cache: SemanticCache = build_cache("semantic", self.full_options(), db=db)  # type: ignore[assignment]

    def full_options(self) -> dict[str, Any]:
        return {"index_path": str(self.path / "cache" / "index.faiss"), **self.options}

    async def restart(self, **options: Any) -> SemanticCache:
        await self.cache.close()
        self.options.update(options)
        self.cache = build_cache("semantic", self.full_options(), db=self.db)  # type: ignore[assignment]
        await self.cache.start()
        return self.cache

    def request(self, text: str, tenant: str = "t1", system: str | None = None) -> tuple[Any, Prompt]:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return make_cache_key(tenant, messages, {"temperature": 0}), Prompt(text, 10, embed=self.embed)

    async def ask(self, text: str, min_capability: float = 0.0, **kw: Any) -> CacheHit | None:
        key, prompt = self.request(text, **kw)
        return await self.cache.lookup(key, prompt, min_capability=min_capability)

    async def put(
        self, text: str, answer: str, capability: float = 1.0, request_id: str = "", **kw: Any
    ) -> str | None:
        key, prompt = self.request(text, **kw)
        body = completion(answer)
        return await self.cache.store(key, prompt, body, "medium", capability, request_id or f"req-{text}")


def completion(text: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "upstream-id",
        "object": "chat.completion",
        "created": 1,
        "model": "medium",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }


@pytest.fixture
async def harness(db: Database, embed: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(db, embed, tmp_path)
    await h.cache.start()
    yield h
    await h.cache.close()


def answer(hit: CacheHit | None) -> str | None:
    return None if hit is None else hit.response["choices"][0]["message"]["content"]


async def test_exact_hit_and_whitespace_normalisation(harness: Harness) -> None:
    assert await harness.ask(LEARN) is None
    entry_id = await harness.put(LEARN, "Practice daily.", request_id="req-1")
    hit = await harness.ask(LEARN)
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    assert hit.entry_id == entry_id and hit.request_id == "req-1" and hit.source_model == "medium"
    assert hit.response == completion("Practice daily.") and hit.age_s >= 0
    spaced = await harness.ask("  How do I   reverse a list in Python?\n")
    assert spaced is not None and spaced.kind == "exact"
    stats = harness.cache.stats()
    assert stats["hits"] == {"exact": 2, "semantic": 0, "total": 2} and stats["lookups"] == 3
    assert stats["hit_rate"] == pytest.approx(2 / 3) and stats["tokens_saved"] == 2 * 42


async def test_semantic_hit_on_paraphrase_and_miss_on_other_question(harness: Harness) -> None:
    await harness.put(LEARN, "Practice daily.")
    hit = await harness.ask(LEARN_PARAPHRASE)
    assert hit is not None and hit.kind == "semantic" and answer(hit) == "Practice daily."
    assert harness.cache.threshold <= hit.similarity < 1.0
    assert await harness.ask("What is the capital of France?") is None
    assert harness.cache.stats()["hits"]["semantic"] == 1


@pytest.mark.parametrize(
    ("stored", "asked", "reason"),
    [
        ("How do I convert 5 kilometers to miles?", "How do I convert 8 kilometers to miles?", "numbers"),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("How do I install Python on Windows?", "How do I install Python on Ubuntu?", "entities"),
    ],
)
async def test_guard_refuses_near_misses_the_embedding_cannot_see(
    db: Database, embed: Any, tmp_path: Path, stored: str, asked: str, reason: str
) -> None:
    h = Harness(db, embed, tmp_path, threshold=0.85)
    await h.cache.start()
    await h.put(stored, "the stored answer")
    assert await h.ask(asked) is None
    assert h.cache.stats()["refused"][reason] == 1
    unguarded = await h.restart(guard=False)  # same entry: the guard alone refused it
    hit = await h.ask(asked)
    assert hit is not None and hit.kind == "semantic" and hit.similarity >= unguarded.threshold
    await h.cache.close()


async def test_tenants_and_scopes_never_share_answers(harness: Harness) -> None:
    await harness.put(LEARN, "tenant one's answer", tenant="t1", system="You are terse.")
    assert answer(await harness.ask(LEARN, tenant="t1", system="You are terse.")) == "tenant one's answer"
    assert await harness.ask(LEARN, tenant="t2", system="You are terse.") is None
    assert await harness.ask(LEARN_PARAPHRASE, tenant="t2", system="You are terse.") is None
    assert await harness.ask(LEARN, tenant="t1", system="You are verbose.") is None
    assert await harness.ask(LEARN_PARAPHRASE, tenant="t1") is None
    assert harness.cache.stats("t2")["entries"] == 0 and harness.cache.stats("t1")["entries"] == 1
    assert "size" not in harness.cache.stats("t1")["index"]  # a tenant does not see the shared index


async def test_only_an_at_least_as_capable_model_answers(harness: Harness) -> None:
    await harness.put(LEARN, "from a medium model", capability=1.0)
    assert await harness.ask(LEARN, min_capability=2.0) is None
    assert await harness.ask(LEARN_PARAPHRASE, min_capability=2.0) is None
    assert harness.cache.stats()["refused"]["capability"] == 2
    assert (await harness.ask(LEARN, min_capability=1.0)).kind == "exact"  # type: ignore[union-attr]
    assert (await harness.ask(LEARN_PARAPHRASE, min_capability=0.0)).kind == "semantic"  # type: ignore[union-attr]


async def test_only_complete_answers_are_stored(harness: Harness) -> None:
    key, prompt = harness.request(LEARN)
    for body in (
        completion("cut off mid-sente", finish_reason="length"),
        completion("", finish_reason="stop"),
        completion("blocked", finish_reason="content_filter"),
        {"error": {"message": "boom"}},
        {"choices": []},
    ):
        assert await harness.cache.store(key, prompt, body, "medium", 1.0, "r") is None
    assert harness.cache.stats()["store_refused"] == 5 and len(harness.cache.entries) == 0
    tools = completion("")
    tools["choices"][0]["finish_reason"] = "tool_calls"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools["choices"][0]["message"]["tool_calls"] = [call]
    assert await harness.cache.store(key, prompt, tools, "medium", 1.0, "r") is not None


async def test_a_new_answer_replaces_the_old_one_for_the_same_request(harness: Harness) -> None:
    await harness.put(LEARN, "old answer")
    await harness.put(LEARN, "new answer")  # what ``refresh`` does: skip lookup, store again
    assert answer(await harness.ask(LEARN)) == "new answer"
    stats = harness.cache.stats()
    assert stats["entries"] == 1 and stats["evictions"]["replaced"] == 1 and stats["index"]["size"] == 1


async def test_long_turns_use_the_exact_tier_only(harness: Harness) -> None:
    long_text = "Summarise this: " + "lorem ipsum dolor " * 80
    await harness.put(long_text, "summary")
    assert (await harness.ask(long_text)).kind == "exact"  # type: ignore[union-attr]
    assert await harness.ask(long_text + " please") is None


async def test_ttl_expiry(harness: Harness) -> None:
    cache = harness.cache
    await harness.put(LEARN, "fresh")
    start = time.time()
    cache.clock = lambda: start + cache.ttl_s - 1  # type: ignore[operator]
    assert await harness.ask(LEARN) is not None
    cache.clock = lambda: start + cache.ttl_s + 1  # type: ignore[operator]
    assert await harness.ask(LEARN) is None and await harness.ask(LEARN_PARAPHRASE) is None
    await cache.wait_idle()
    assert len(cache.entries) == 0 and cache.stats()["evictions"]["ttl"] == 1
    assert await harness.db.fetch("SELECT count(*) FROM cache_entries") == (["count_star()"], [(0,)])


async def test_retention_evicts_entries_older_than_a_cutoff(harness: Harness) -> None:
    await harness.put(LEARN, "old")
    cutoff = time.time()
    harness.cache.clock = lambda: cutoff + 1  # type: ignore[method-assign]
    await harness.put("Why is the sky blue?", "newer")
    assert await harness.cache.evict_older_than(cutoff + 0.5) == 1
    assert await harness.ask(LEARN) is None and await harness.ask("Why is the sky blue?") is not None
    assert harness.cache.stats()["evictions"]["retention"] == 1


async def test_lru_eviction_at_max_entries(db: Database, embed: Any, tmp_path: Path) -> None:
    h = Harness(db, embed, tmp_path, max_entries=3)
    await h.cache.start()
    questions = ["Why is the sky blue?", "How do magnets work?", "What causes rain?", "How do vaccines work?"]
    for q in questions[:3]:
        await h.put(q, f"answer: {q}")
    assert await h.ask(questions[0]) is not None  # now the most recently used
    await h.put(questions[3], "answer: vaccines")
    assert await h.ask(questions[1]) is None  # least recently used: evicted
    for q in (questions[0], questions[2], questions[3]):
        assert await h.ask(q) is not None
    stats = h.cache.stats()
    assert stats["entries"] == 3 and stats["evictions"]["lru"] == 1 and stats["index"]["size"] == 3
    await h.cache.close()


async def test_evict_request_removes_what_it_produced_and_what_served_it(harness: Harness) -> None:
    produced = await harness.put(LEARN, "bad answer", request_id="req-bad")
    served = await harness.put("Why is the sky blue?", "Rayleigh scattering.", request_id="req-sky")
    await harness.db.run(
        lambda con: con.execute(
            "INSERT INTO requests (id, created_at, tenant, stream, status, cache_entry_id)"
            " VALUES ('req-served', now(), 't1', false, 200, ?)",
            [served],
        )
    )
    assert await harness.cache.evict_request("req-bad") == 1
    assert await harness.cache.evict_request("req-served") == 1
    assert await harness.cache.evict_request("req-served") == 0
    assert await harness.cache.evict_entry(produced or "") == 0
    assert await harness.ask(LEARN) is None and await harness.ask("Why is the sky blue?") is None
    assert harness.cache.stats()["evictions"]["feedback"] == 2


async def test_dollars_saved_come_from_the_producing_request(harness: Harness) -> None:
    await harness.put(LEARN, "answer", request_id="req-cost")
    await harness.db.run(
        lambda con: con.execute(
            "INSERT INTO requests (id, created_at, tenant, stream, status, cost_usd)"
            " VALUES ('req-cost', now(), 't1', false, 200, 0.0125)"
        )
    )
    await harness.ask(LEARN)
    await harness.ask(LEARN_PARAPHRASE)
    assert harness.cache.stats()["usd_saved"] == pytest.approx(0.025)


async def test_restart_keeps_entries_and_counters(harness: Harness) -> None:
    await harness.put(LEARN, "kept")
    await harness.ask(LEARN)
    cache = await harness.restart()
    assert cache.stats()["index"]["loaded_from"] == "file"
    assert answer(await harness.ask(LEARN)) == "kept"
    assert (await harness.ask(LEARN_PARAPHRASE)).kind == "semantic"  # type: ignore[union-attr]
    assert cache.stats()["hits"]["exact"] == 2 and cache.stats()["stores"] == 1


async def test_stale_index_file_is_caught_up_and_a_bad_one_rebuilt(harness: Harness, tmp_path: Path) -> None:
    index_file = tmp_path / "cache" / "index.faiss"
    await harness.put(LEARN, "first")
    await harness.put("What causes rain?", "Condensation.")
    await harness.restart()
    stale_copy = tmp_path / "stale.faiss"
    shutil.copy(index_file, stale_copy)
    shutil.copy(deleted_path(str(index_file)), deleted_path(str(stale_copy)))
    await harness.put("Why is the sky blue?", "Rayleigh scattering.")
    await harness.cache.evict_request("req-What causes rain?")
    await harness.cache.close()
    shutil.copy(stale_copy, index_file)  # as if the process died before saving the index
    shutil.copy(deleted_path(str(stale_copy)), deleted_path(str(index_file)))
    cache = await harness.restart()
    info = cache.stats()["index"]
    assert info["loaded_from"] == "file" and "caught up: 1 entries" in info["note"] and info["size"] == 2
    assert (await harness.ask("Why is the sky blue? ")).kind == "exact"  # type: ignore[union-attr]
    assert (await harness.ask(LEARN_PARAPHRASE)).kind == "semantic"  # type: ignore[union-attr]
    assert await harness.ask("What causes rain?") is None
    index_file.unlink()
    cache = await harness.restart()
    assert cache.stats()["index"]["loaded_from"] == "rebuilt" and cache.stats()["index"]["size"] == 2
    assert (await harness.ask(LEARN_PARAPHRASE)).kind == "semantic"  # type: ignore[union-attr]
    await harness.cache.close()
    foreign = build_index(cache.index_kind, cache.dim)
    foreign.add(cache.index.ids(), np.eye(2, cache.dim, dtype=np.float32))  # same ids, other vectors
    foreign.save(str(index_file))
    cache = await harness.restart()
    assert cache.stats()["index"]["loaded_from"] == "rebuilt" and "differ" in cache.stats()["index"]["note"]
    assert (await harness.ask(LEARN_PARAPHRASE)).kind == "semantic"  # type: ignore[union-attr]
    index_file.write_bytes(b"not a faiss file")
    cache = await harness.restart(index="flat")  # also: another index kind than the file's
    assert cache.stats()["index"]["loaded_from"] == "rebuilt" and cache.stats()["index"]["kind"] == "flat"
    assert answer(await harness.ask("Why is the sky blue?")) == "Rayleigh scattering."


async def test_concurrent_stores_and_lookups(harness: Harness) -> None:
    topics = [f"How do I cook recipe number {i} from my grandmother's book?" for i in range(25)]

    async def store_then_lookup(i: int) -> CacheHit | None:
        await harness.put(topics[i], f"recipe {i}")
        return await harness.ask(topics[i])

    await harness.embed(topics)  # one batch up front: the test is about interleaving, not MiniLM speed
    mixed = [*(store_then_lookup(i) for i in range(25)), *(harness.ask(t) for t in topics)]
    results = await asyncio.gather(*mixed)
    assert all(answer(hit) == f"recipe {i}" for i, hit in enumerate(results[:25]))
    assert all(hit is None or answer(hit) == f"recipe {i}" for i, hit in enumerate(results[25:]))
    (count,) = (await harness.db.fetch("SELECT count(*) FROM cache_entries"))[1][0]
    assert count == len(harness.cache.entries) == len(harness.cache.index) == 25


async def test_background_compaction_keeps_serving(db: Database, embed: Any, tmp_path: Path) -> None:
    h = Harness(db, embed, tmp_path, index="hnsw", max_entries=4, index_options={"compact_min": 2})
    await h.cache.start()
    questions = [f"What is the history of the city number {i}?" for i in range(12)]
    for q in questions:
        await h.put(q, q.upper())
    await h.cache.wait_idle()
    index = h.cache.index
    assert len(index) == 4 and index.tombstones <= 2 and len(index) + index.tombstones < len(questions)
    for q in questions[-4:]:
        assert answer(await h.ask(q)) == q.upper()
    await h.cache.close()


async def test_a_failing_database_makes_a_miss_not_an_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.put(LEARN, "stored")

    async def broken(*_: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(harness.db, "run", broken)
    assert await harness.ask(LEARN) is None and await harness.ask(LEARN_PARAPHRASE) is None
    monkeypatch.undo()
    assert harness.cache.stats()["errors"] == 2
    assert answer(await harness.ask(LEARN)) == "stored"


def test_options_are_validated_and_sampling_policy_is_configurable() -> None:
    with pytest.raises(ValueError, match="unknown cache options"):
        SemanticCache({"treshold": 0.9})
    assert is_cacheable({"temperature": 0.2}) and not is_cacheable({"temperature": 0.7})
    assert is_cacheable({}) and not is_cacheable({}, {"cache_unset_temperature": False})
    assert not is_cacheable({"temperature": 0, "n": 2})
    assert is_cacheable({"temperature": 1}, {"cache_all": True})


# -- through the gateway ---------------------------------------------------------------------------


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream()


@pytest.fixture
def gateway(tmp_path: Path, mock: MockUpstream) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, MOCK_POOL, **{"cache.enabled": True})
    with TestClient(create_app(settings, build_services(settings, upstream=mock))) as client:
        yield client


def ask_gateway(client: TestClient, text: str, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    body = {"messages": [{"role": "user", "content": text}], "temperature": 0, **extra}
    return client.post(CHAT, json=body, headers=headers or {})


def wait_for_entries(client: TestClient, count: int) -> None:
    """Stream write-backs run after the last byte: poll the cache stats until they land."""
    deadline = time.monotonic() + 10
    while client.get("/admin/api/cache").json()["entries"] < count:
        assert time.monotonic() < deadline, "the streamed answer was never stored"
        time.sleep(0.02)


def test_gateway_serves_a_repeat_from_the_cache(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("Practice every day.")
    first = ask_gateway(gateway, LEARN)
    assert first.headers["x-compass-cache"] == "miss" and first.json()["routing"]["cache"]["status"] == "miss"
    second = ask_gateway(gateway, LEARN)
    assert second.headers["x-compass-cache"] == "exact" and len(mock.history) == 1
    body = second.json()
    assert body["choices"][0]["message"]["content"] == "Practice every day."
    assert body["id"] != first.json()["id"]
    assert body["routing"]["cache"]["source_request_id"] == first.json()["id"]
    similar = ask_gateway(gateway, LEARN_PARAPHRASE)
    assert similar.headers["x-compass-cache"] == "semantic" and len(mock.history) == 1
    assert ask_gateway(gateway, LEARN, temperature=1.0).headers["x-compass-cache"] == "skip"
    stats = gateway.get("/admin/api/cache").json()
    assert stats["hits"] == {"exact": 1, "semantic": 1, "total": 2} and stats["entries"] == 1


def test_gateway_bypass_modes(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("not stored")
    assert ask_gateway(gateway, LEARN, {"x-compass-cache": "no-store"}).headers["x-compass-cache"] == "miss"
    mock.enqueue("stored")
    assert ask_gateway(gateway, LEARN).headers["x-compass-cache"] == "miss"
    mock.enqueue("fresh but not stored")
    no_cache = ask_gateway(gateway, LEARN, compass={"cache": "no-cache"})  # extra_body={"compass": ...}
    assert no_cache.headers["x-compass-cache"] == "bypass"
    assert no_cache.json()["choices"][0]["message"]["content"] == "fresh but not stored"
    mock.enqueue("refreshed")
    assert ask_gateway(gateway, LEARN, {"x-compass-cache": "refresh"}).headers["x-compass-cache"] == "bypass"
    again = ask_gateway(gateway, LEARN)
    assert again.headers["x-compass-cache"] == "exact" and len(mock.history) == 4
    assert again.json()["choices"][0]["message"]["content"] == "refreshed"


def sse_chunks(text: str) -> tuple[list[dict[str, Any]], str]:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(e) for e in events[:-1]], events[-1]


def test_gateway_stores_a_finished_stream_and_replays_it(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("one two three four")
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    first = ask_gateway(gateway, LEARN, **stream)
    assert first.headers["x-compass-cache"] == "miss"
    wait_for_entries(gateway, 1)
    replay = ask_gateway(gateway, LEARN, **stream)
    assert replay.headers["x-compass-cache"] == "exact" and len(mock.history) == 1
    chunks, done = sse_chunks(replay.text)
    assert done == "[DONE]" and chunks[0]["routing"]["cache"]["status"] == "exact"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.split() == ["one", "two", "three", "four"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    original_usage = sse_chunks(first.text)[0][-1]["usage"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == original_usage
    plain = ask_gateway(gateway, LEARN)  # the streamed answer also serves a non-streaming request
    assert plain.headers["x-compass-cache"] == "exact"
    assert plain.json()["choices"][0]["message"]["content"].split() == ["one", "two", "three", "four"]


def test_gateway_negative_feedback_evicts_the_served_answer(gateway: TestClient, mock: MockUpstream) -> None:
    mock.enqueue("a wrong answer")
    ask_gateway(gateway, LEARN)
    served = ask_gateway(gateway, LEARN)
    assert served.headers["x-compass-cache"] == "exact"
    feedback = gateway.post("/feedback", json={"id": served.json()["id"], "thumbs": "down"}).json()
    assert feedback["cache_evicted"] >= 1
    mock.enqueue("a better answer")
    after = ask_gateway(gateway, LEARN)
    assert after.headers["x-compass-cache"] == "miss" and len(mock.history) == 2
    assert gateway.get("/admin/api/cache").json()["evictions"]["feedback"] == 1
