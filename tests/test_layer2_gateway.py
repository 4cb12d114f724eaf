"""Layer 2 inside the gateway: feedback teaches it, failures teach it, and a restart forgets nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from compass.errors import UpstreamError
from compass.http.app import create_app
from compass.services import build_services
from compass.upstream.mock import MockUpstream
from tests.helpers import MOCK_POOL, make_settings, posteriors

CHAT = "/v1/chat/completions"


def thompson_gateway(home: Path, mock: MockUpstream) -> TestClient:
    settings = make_settings(
        home, MOCK_POOL, **{"selector.backend": "thompson", "selector.options": {"seed": 3}}
    )
    return TestClient(create_app(settings, build_services(settings, upstream=mock)))


def ask(client: TestClient, text: str, **extra: Any) -> dict[str, Any]:
    response = client.post(CHAT, json={"messages": [{"role": "user", "content": text}], **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_feedback_moves_the_posterior_and_restart_rebuilds_it_exactly(tmp_path: Path) -> None:
    mock = MockUpstream()
    with thompson_gateway(tmp_path, mock) as client:
        before = posteriors(client)
        answers = [ask(client, f"question {i}") for i in range(12)]
        for i, answer in enumerate(answers):
            client.post("/feedback", json={"id": answer["id"], "score": (i % 4) / 3})
        # a repeat replaces the earlier score instead of counting twice
        client.post("/feedback", json={"id": answers[0]["id"], "thumbs": "up"})
        live = posteriors(client)
        chosen = answers[0]["routing"]["model"]
        context = answers[0]["routing"]["context"]
        assert live[context][chosen] != before[context][chosen]
        assert sum(p for _, _, p in live[context].values()) == 12
    with thompson_gateway(tmp_path, MockUpstream()) as restarted:
        rebuilt = posteriors(restarted)
    for context, models in live.items():
        for name, (alpha, beta, pulls) in models.items():
            assert rebuilt[context][name] == (
                pytest.approx(alpha, rel=1e-9),
                pytest.approx(beta, rel=1e-9),
                pulls,
            )


def test_upstream_failure_is_a_zero_reward_for_the_failed_model(tmp_path: Path) -> None:
    mock = MockUpstream()
    with thompson_gateway(tmp_path, mock) as client:
        mock.enqueue_error(UpstreamError("provider down"))
        answer = ask(client, "hello", model="compass/cheap")
        failed = [a for a in answer["routing"]["attempts"] if a["status"] != "ok"]
        assert failed, answer["routing"]["attempts"]
        rows = client.post(
            "/admin/api/sql",
            json={"sql": "SELECT model, reward, source FROM rewards WHERE source = 'failure'"},
        ).json()["rows"]
        assert [tuple(r) for r in rows] == [(failed[0]["model"], 0.0, "failure")]


def test_admin_bandit_view_has_intervals_and_shares(tmp_path: Path) -> None:
    with thompson_gateway(tmp_path, MockUpstream()) as client:
        snapshot = client.get("/admin/api/bandit").json()
    simple = snapshot["contexts"]["simple"]
    assert set(simple) == {"small", "medium", "large"}
    for model in simple.values():
        low, high = model["ci95"]
        assert 0 <= low < model["mean"] < high <= 1
    shares = [m["share"] for m in simple.values()]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)
