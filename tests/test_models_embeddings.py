"""``GET /v1/models/{id}`` and ``POST /v1/embeddings`` through Litestar's test client.

The local model is the real bundled MiniLM; the pool embedding model goes to the in-process
mock upstream (the end-to-end file sends it through LiteLLM to the fake upstream).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings

EMBEDDING_MODEL = {
    "name": "embed-small",
    "litellm_model": "openai/text-embedding-3-small",
    "input_price_per_mtok": 0.02,
    "mode": "embedding",
}


@pytest.fixture(scope="module")
def mock() -> MockUpstream:
    return MockUpstream()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock: MockUpstream) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("embeddings")
    settings = make_settings(home, [*MOCK_POOL, EMBEDDING_MODEL])
    app = create_app(settings, build_services(settings, upstream=mock))
    with TestClient(app) as client:
        yield client


def sql(client: TestClient, query: str) -> list[list[Any]]:
    response = client.post("/admin/api/sql", json={"sql": query})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_every_listed_model_can_be_retrieved(gateway: TestClient) -> None:
    listed = gateway.get("/v1/models").json()["data"]
    ids = [card["id"] for card in listed]
    assert {"auto", "compass/auto", "small", "compass/minilm", "embed-small"} <= set(ids)
    assert "embed-small" not in [c["id"] for c in listed if not c["compass"].get("mode")]  # not a chat model
    for card in listed:
        response = gateway.get(f"/v1/models/{card['id']}")
        assert response.status_code == 200 and response.json() == card


def test_unknown_model_is_a_404_in_openai_shape(gateway: TestClient) -> None:
    response = gateway.get("/v1/models/gpt-99")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "gpt-99" in error["message"] and error["type"]


def test_local_embeddings_are_the_cache_embedders_vectors(gateway: TestClient) -> None:
    from layers.embedding import Embedder

    texts = ["the cat sat on the mat", "Quarterly revenue grew 12%"]
    response = gateway.post("/v1/embeddings", json={"model": "compass/minilm", "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "compass/minilm"
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    expected = Embedder().encode(texts)
    assert got.shape == (2, 384) and np.allclose(got, expected, atol=1e-5)
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts) * 2
    single = gateway.post(
        "/v1/embeddings", json={"model": "compass/minilm", "input": texts[0], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(single["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, expected[0], atol=1e-5)
    request_id = response.headers["x-compass-request-id"]
    rows = sql(
        gateway,
        "SELECT model, routing_method, prompt_tokens, cost_usd, status FROM requests"
        f" WHERE id = '{request_id}'",
    )
    assert rows == [["compass/minilm", "embeddings", body["usage"]["prompt_tokens"], 0.0, 200]]


def test_pool_embedding_model_is_passed_through_and_priced(gateway: TestClient, mock: MockUpstream) -> None:
    response = gateway.post(
        "/v1/embeddings",
        json={
            "model": "embed-small",
            "input": ["one two", "three"],
            "encoding_format": "base64",
            "dimensions": 8,
        },
    )
    assert response.status_code == 200, response.text
    model, inputs, params = mock.history[-1]
    assert model == "embed-small" and inputs == ["one two", "three"] and params == {"dimensions": 8}
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in response.json()["data"]]
    assert [v.shape for v in vectors] == [(8,), (8,)]
    request_id = response.headers["x-compass-request-id"]
    rows = sql(gateway, f"SELECT model, prompt_tokens, cost_usd FROM requests WHERE id = '{request_id}'")
    assert rows == [["embed-small", 3, pytest.approx(3 * 0.02 / 1e6)]]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "compass/minilm", "input": [1, 2, 3]}, 400, "input"),
        ({"model": "compass/minilm", "input": "hi", "dimensions": 3}, 400, "dimensions"),
        ({"model": "small", "input": "hi"}, 400, "model"),
        ({"model": "nope", "input": "hi"}, 404, "model"),
        ({"model": "compass/minilm", "input": []}, 400, None),
        ({"model": "compass/minilm", "input": ""}, 400, None),
        ({"model": "compass/minilm", "input": ["a", 3]}, 400, None),
        ({"model": "compass/minilm", "input": "hi", "encoding_format": "int8"}, 400, None),
        ({"input": "hi"}, 400, None),
    ],
)
def test_bad_embedding_requests(gateway: TestClient, body: dict, status: int, param: str | None) -> None:
    response = gateway.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param


def test_failed_embedding_calls_are_recorded(gateway: TestClient) -> None:
    gateway.post("/v1/embeddings", json={"model": "nope", "input": "hi"})
    rows = sql(gateway, "SELECT status FROM requests WHERE requested_model = 'nope'")
    assert rows and all(row == [404] for row in rows)


def test_embedding_calls_do_not_count_as_routing_savings(gateway: TestClient) -> None:
    before = gateway.get("/admin/api/savings").json()
    response = gateway.post("/v1/embeddings", json={"model": "embed-small", "input": ["many words " * 50]})
    assert response.status_code == 200
    after = gateway.get("/admin/api/savings").json()
    assert after == before
