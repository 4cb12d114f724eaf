"""Layer 1 backends: one contract run over every backend, then what is particular to each.

Everything is offline: the embedding backend uses the bundled MiniLM and the shipped heads, the
RouteLLM backend a tiny BERT written here, the remote backend a real gateway and a small aiohttp
service on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from layers.classifier.base import Classification, Classifier, build_classifier
from layers.classifier.embedding import EmbeddingClassifier, default_weights_path
from layers.classifier.remote import RemoteClassifier
from layers.classifier.routellm_bert import RouteLLMBertClassifier, strong_win_rate
from layers.types import TIERS, Prompt
from tests.helpers import free_port, make_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytestmark = pytest.mark.asyncio(loop_scope="module")

DATA = Path(__file__).resolve().parents[1] / "data" / "classifier"
TINY_WORDS = (
    "hello world hi how are you what is the a of to and prove theorem write code python function "
    "poem story capital france explain why , . ? !"
)
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS.split()]
PROMPTS = [
    "hi, how are you?",
    "What is the capital of France?",
    "Write a python function to reverse a list.",
    "Prove that the square root of two is irrational.",
    "Write a short poem about the sea.",
]
HAS_NVIDIA_TINY = importlib.util.find_spec("tests.tiny_checkpoints") is not None


# -- fixtures: the model, the checkpoints, the servers --------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Any:
    from layers.embedding import Embedder

    model = Embedder(threads=2)
    model.load()
    return model


def write_tiny_bert(folder: Path, bias: list[float] | None = None) -> Path:
    """A 2-layer BERT with a hand-written WordPiece vocab; ``bias`` pins the logits (zero weights)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    BertTokenizer.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


class GatewayThread:
    """A real gateway (length classifier, mock upstream) served by uvicorn on a loopback port."""

    def __init__(self, home: Path) -> None:
        import uvicorn

        from compass.http.app import create_app
        from compass.services import build_services
        from compass.upstream.mock import MockUpstream
        from tests.helpers import MOCK_POOL

        settings = make_settings(home, MOCK_POOL)
        app = create_app(settings, build_services(settings, upstream=MockUpstream()))
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with GatewayThread(tmp_path_factory.mktemp("gateway")) as server:
        yield server


def hf_labels(text: str) -> list[dict[str, Any]]:
    """A fixed rule (more words, more complex) in Hugging Face text-classification output."""
    words = len(text.split())
    raw = {"LABEL_0": 1.0 / words, "LABEL_1": 0.3, "LABEL_2": words / 10}
    total = sum(raw.values())
    return sorted(({"label": k, "score": v / total} for k, v in raw.items()), key=lambda x: -x["score"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service() -> AsyncIterator[str]:
    """An aiohttp classification service: HF style, slow, failing and malformed endpoints."""
    hits = {"error": 0}

    async def hf(request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["inputs"]
        if request.headers.get("Authorization") not in (None, "Bearer sekrit"):
            return web.json_response({"error": "bad key"}, status=401)
        return web.json_response([hf_labels(t) for t in inputs])

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response([])

    async def error(_: web.Request) -> web.Response:
        hits["error"] += 1
        return web.Response(status=500, text="boom")

    async def short(_: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.add_routes(
        [web.post("/hf", hf), web.post("/slow", slow), web.post("/error", error), web.post("/short", short)]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


BACKENDS = ["length", "embedding", "routellm_bert", "remote", "remote_hf", "nvidia"]


def build(name: str, deps: dict[str, Any], tmp_path: Path) -> Classifier:
    if name == "length":
        return build_classifier("length", {})
    if name == "embedding":
        return build_classifier("embedding", {}, embedder=deps["embedder"])
    if name == "routellm_bert":
        return build_classifier("routellm_bert", {"model": str(deps["tiny_bert"])})
    if name == "remote":
        return build_classifier("remote", {"url": deps["gateway"].url})
    if name == "remote_hf":
        url = deps["service"] + "/hf"
        labels = {"LABEL_0": "simple", "LABEL_1": "medium", "LABEL_2": "complex"}
        return build_classifier("remote", {"url": url, "protocol": "hf", "labels": labels})
    if not HAS_NVIDIA_TINY:
        pytest.skip("no tests/tiny_checkpoints.py (tiny NVIDIA checkpoint generator) in this checkout")
    from tests.tiny_checkpoints import write_tiny_nvidia

    folder = write_tiny_nvidia(tmp_path)
    return build_classifier("nvidia", {"path": str(folder), "device": "cpu", "fast_path": "eager"})


@pytest_asyncio.fixture(params=BACKENDS, loop_scope="module")
async def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    embedder: Any,
    tiny_bert: Path,
    gateway: GatewayThread,
    service: str,
) -> AsyncIterator[Classifier]:
    deps = {"embedder": embedder, "tiny_bert": tiny_bert, "gateway": gateway, "service": service}
    classifier = build(request.param, deps, tmp_path)
    await classifier.start()
    yield classifier
    await classifier.close()


@contextlib.asynccontextmanager
async def started(classifier: Any) -> AsyncIterator[Any]:
    await classifier.start()
    try:
        yield classifier
    finally:
        await classifier.close()


def prompt(text: str, embedder: Any = None) -> Prompt:
    return Prompt(text, approx_tokens=max(1, len(text) // 4), embed=embedder.embed if embedder else None)


def check_valid(result: Classification, backend: Classifier) -> None:
    assert isinstance(result, Classification)
    assert result.tier in TIERS
    assert math.isfinite(result.score)
    assert result.backend == backend.name
    assert result.latency_ms > 0.0
    assert all(math.isfinite(v) for v in result.scores.values())
    if result.task_type_prob is not None:
        assert 0.0 <= result.task_type_prob <= 1.0


# -- the contract -------------------------------------------------------------------------------


async def test_contract_classify(backend: Classifier, embedder: Any) -> None:
    for text in PROMPTS:
        check_valid(await backend.classify(prompt(text, embedder)), backend)
    assert backend.info()["backend"] == backend.name


async def test_contract_batch_equals_one_by_one(backend: Classifier, embedder: Any) -> None:
    batch = await backend.classify_texts(PROMPTS)
    single = [await backend.classify(prompt(t, embedder)) for t in PROMPTS]
    assert len(batch) == len(PROMPTS)
    for b, s in zip(batch, single, strict=True):
        check_valid(b, backend)
        assert b.tier == s.tier and b.task_type == s.task_type
        assert b.score == pytest.approx(s.score, abs=1e-4)
    assert await backend.classify_texts([]) == []


async def test_contract_concurrent(backend: Classifier, embedder: Any) -> None:
    texts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(20)]
    results = await asyncio.gather(*(backend.classify(prompt(t, embedder)) for t in texts))
    expected = await backend.classify_texts(texts)
    for got, want in zip(results, expected, strict=True):
        check_valid(got, backend)
        assert got.tier == want.tier and got.score == pytest.approx(want.score, abs=1e-4)


# -- embedding ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def emb(embedder: Any) -> AsyncIterator[EmbeddingClassifier]:
    classifier = EmbeddingClassifier({}, embedder=embedder)
    await classifier.start()
    yield classifier
    await classifier.close()


async def test_embedding_loads_shipped_weights_by_default(emb: EmbeddingClassifier) -> None:
    assert Path(emb.weights_path or "") == default_weights_path()
    assert emb.info()["task_types"] and "code" in emb.info()["task_types"]


async def test_embedding_everyday_vs_hard(emb: EmbeddingClassifier, embedder: Any) -> None:
    easy = await emb.classify(prompt("hi, how are you?", embedder))
    hard = await emb.classify(
        prompt(
            "Design an algorithm for all-pairs shortest paths in a directed graph with negative edge "
            "weights under edge insertions, prove its correctness and derive tight amortized bounds.",
            embedder,
        )
    )
    assert easy.tier == "simple" and hard.tier == "complex"
    assert hard.score > easy.score + 0.3
    assert easy.scores["p_simple"] + easy.scores["p_medium"] + easy.scores["p_complex"] == pytest.approx(1.0)


async def test_embedding_reuses_the_prompts_embedding(emb: EmbeddingClassifier, embedder: Any) -> None:
    calls: list[list[str]] = []

    async def counting(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return await embedder.embed(texts)

    shared = Prompt("Write a short poem about the sea.", approx_tokens=8, embed=counting)
    await emb.classify(shared)
    cached = await shared.embedding()  # what the semantic cache would ask for next
    assert len(calls) == 1 and cached.shape == (384,)


async def test_embedding_threshold_option(embedder: Any) -> None:
    cut = EmbeddingClassifier({"thresholds": [0.0, 0.0001]}, embedder=embedder)
    await cut.start()
    result = await cut.classify(prompt("hi", embedder))
    assert result.tier == "complex" and result.details["decision"] == "thresholds"
    with pytest.raises(ValueError):
        bad = EmbeddingClassifier({"thresholds": [0.8, 0.2]}, embedder=embedder)
        await bad.start()


async def test_embedding_missing_weights_is_a_clear_error(tmp_path: Path, embedder: Any) -> None:
    with pytest.raises(FileNotFoundError):
        await EmbeddingClassifier({"weights_path": str(tmp_path / "none.npz")}, embedder=embedder).start()


def heldout_sample(per_source: int = 30) -> list[dict[str, Any]]:
    """A fixed, source-stratified slice of the shipped held-out split (first rows of each source)."""
    rows = [json.loads(line) for line in (DATA / "heldout.jsonl").open(encoding="utf-8")]
    taken: dict[str, int] = {}
    sample = []
    for row in rows:
        if taken.get(row["source"], 0) < per_source:
            taken[row["source"]] = taken.get(row["source"], 0) + 1
            sample.append(row)
    return sample


async def test_embedding_heldout_accuracy_beats_majority(emb: EmbeddingClassifier) -> None:
    sample = heldout_sample()
    results = await emb.classify_texts([r["text"] for r in sample])
    truth = [r["tier"] for r in sample]
    accuracy = np.mean([r.tier == t for r, t in zip(results, truth, strict=True)])
    majority = max(truth.count(t) for t in TIERS) / len(truth)
    assert accuracy >= majority + 0.15, (accuracy, majority)
    tasks = [(r.task_type, s["task"]) for r, s in zip(results, sample, strict=True) if s["task"]]
    task_accuracy = np.mean([got == want for got, want in tasks])
    task_majority = max([w for _, w in tasks].count(t) for t in {w for _, w in tasks}) / len(tasks)
    assert task_accuracy >= task_majority + 0.25, (task_accuracy, task_majority)


# -- routellm_bert ------------------------------------------------------------------------------


async def test_win_rate_formula_matches_routellm() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert strong_win_rate(logits)[0] == pytest.approx(1 - (p[1] + p[2]))
    assert strong_win_rate(logits)[1] == pytest.approx(1 / 3)


async def test_routellm_pinned_biases_give_the_routellm_score(tmp_path: Path) -> None:
    bias = [1.5, 0.2, -0.7]
    async with started(
        RouteLLMBertClassifier({"model": str(write_tiny_bert(tmp_path / "pinned", bias))})
    ) as clf:
        result = await clf.classify(prompt("prove the theorem"))
        exp = np.exp(bias)
        assert result.score == pytest.approx(1 - (exp[1] + exp[2]) / exp.sum(), abs=1e-5)
        assert result.details["strong_win_rate"] == pytest.approx(result.score)
        assert result.tier == "complex" and result.details["route"] == "strong"  # 0.74 >= 0.5


async def test_routellm_tokenizes_real_words(tiny_bert: Path) -> None:
    async with started(RouteLLMBertClassifier({"path": str(tiny_bert)})) as clf:
        ids = clf._tokenizer("Hello world, prove it!")["input_ids"]
        vocab = {w: i for i, w in enumerate(TINY_VOCAB)}
        assert ids[:4] == [vocab["[CLS]"], vocab["hello"], vocab["world"], vocab[","]]
        assert vocab["[UNK]"] in ids and ids[-1] == vocab["[SEP]"]  # "it" is not in the vocab
        assert clf.info()["device"] == "cpu" and clf.info()["dtype"] == "float32"


async def test_routellm_env_threshold_mapping_and_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tiny_bert(tmp_path / "weak", [-1.0, 0.5, 0.5])  # win rate ~0.1: the weak route
    monkeypatch.setenv("ROUTELLM_BERT_URL", str(folder))
    monkeypatch.setenv("ROUTELLM_THRESHOLD", "0.05")
    monkeypatch.setenv("ROUTELLM_MAPPING", json.dumps({"strong": "gpt-4o", "weak": "medium"}))
    monkeypatch.setenv("ROUTELLM_FALLBACK_MODEL", "gpt-4o-mini")
    strong = RouteLLMBertClassifier({})
    await strong.start()
    result = await strong.classify(prompt("hi"))
    await strong.close()
    assert strong.model_dir == str(folder) and strong.threshold == 0.05
    assert result.details["route"] == "strong" and result.details["suggested_model"] == "gpt-4o"
    weak = RouteLLMBertClassifier({"threshold": 0.5})  # the option beats the environment
    await weak.start()
    result = await weak.classify(prompt("hi"))
    await weak.close()
    assert result.details["route"] == "weak" and result.tier == "medium"  # mapped to a tier
    assert result.details["suggested_model"] == "gpt-4o-mini"


async def test_routellm_offline_without_weights_names_repo_and_command(tmp_path: Path) -> None:
    options = {"model": "routellm/bert_gpt4_augmented", "cache_dir": str(tmp_path), "allow_download": False}
    clf = RouteLLMBertClassifier(options)
    with pytest.raises(FileNotFoundError) as error:
        clf.load()
    assert "routellm/bert_gpt4_augmented" in str(error.value)
    assert "compass download-models" in str(error.value)


async def test_routellm_rejects_bad_mapping_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="remote"):
        RouteLLMBertClassifier({"model": "http://127.0.0.1:9/classify"}).load()
    monkeypatch.setenv("ROUTELLM_MAPPING", "{not json")
    with pytest.raises(ValueError, match="ROUTELLM_MAPPING"):
        RouteLLMBertClassifier({})


# -- remote -------------------------------------------------------------------------------------


async def test_remote_reads_the_gateways_own_answer(gateway: GatewayThread) -> None:
    from layers.classifier.length import LengthClassifier

    async with started(RemoteClassifier({"url": gateway.url})) as remote:
        text = "word " * 300
        got = await remote.classify(prompt(text))
        want = await LengthClassifier().classify(prompt(text))
        assert got.tier == want.tier == "medium" and got.score == pytest.approx(want.score)
        assert got.details["remote_backend"] == "length" and got.details["tokens"] == want.details["tokens"]


async def test_remote_hf_protocol_and_api_key(service: str) -> None:
    labels = {"LABEL_0": "simple", "LABEL_1": "medium", "LABEL_2": "complex"}
    remote = RemoteClassifier(
        {"url": service + "/hf", "protocol": "hf", "labels": labels, "api_key": "sekrit"}
    )
    await remote.start()
    try:
        short, long = await remote.classify_texts(["hi", "a b c d e f g h i j k l m n o p"])
        assert short.tier == "simple" and long.tier == "complex" and long.score > short.score
        assert short.scores["p_simple"] + short.scores["p_medium"] + short.scores[
            "p_complex"
        ] == pytest.approx(1)
    finally:
        await remote.close()


async def test_remote_unknown_hf_label_raises(service: str) -> None:
    async with started(RemoteClassifier({"url": service + "/hf", "protocol": "hf"})) as remote:
        with pytest.raises(RuntimeError, match="LABEL_"):
            await remote.classify(prompt("hi"))


async def test_remote_timeout_raises(service: str) -> None:
    async with started(RemoteClassifier({"url": service + "/slow", "timeout_ms": 200})) as remote:
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await remote.classify(prompt("hi"))
        assert time.perf_counter() - start < 1.5


@pytest.mark.parametrize("path", ["/error", "/short"])
async def test_remote_server_error_or_short_answer_raises(service: str, path: str) -> None:
    async with started(RemoteClassifier({"url": service + path})) as remote:
        with pytest.raises(RuntimeError, match=r"500|one result per input"):
            await remote.classify(prompt("hi"))


async def test_remote_connection_refused_raises() -> None:
    import aiohttp

    async with started(RemoteClassifier({"url": f"http://127.0.0.1:{free_port()}"})) as remote:
        with pytest.raises(aiohttp.ClientConnectionError):
            await remote.classify(prompt("hi"))


async def test_remote_options_are_checked() -> None:
    with pytest.raises(ValueError):
        RemoteClassifier({})
    with pytest.raises(ValueError):
        RemoteClassifier({"url": "http://127.0.0.1:1", "protocol": "grpc"})
    with pytest.raises(ValueError):
        RemoteClassifier({"url": "http://127.0.0.1:1", "protocol": "hf", "labels": {"x": "huge"}})
    assert RemoteClassifier({"url": "http://127.0.0.1:1"}).url.endswith("/v1/classifications")
