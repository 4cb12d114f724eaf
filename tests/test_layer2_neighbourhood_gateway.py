"""The per-prompt selector (``neighbourhood``) inside the gateway, the default whenever the MiniLM
embedder runs: it decides with the vector Layer 1 / the cache computed, every reward row carries
that vector, and a restart (or a fresh replica on the fleet store) rebuilds the same per-prompt
posteriors. Without the embedder the default is tier Thompson."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from litestar.testing import TestClient

from compass.config import SelectorSettings
from compass.errors import UpstreamError
from compass.http.app import create_app
from compass.services import Services, build_services
from compass.upstream.mock import MockUpstream
from layers.bandit.base import SelectionContext
from layers.classifier.base import Classification
from tests.helpers import MOCK_POOL, make_settings
from tests.test_layer2_gateway import ask, posteriors

PROBES = ["write a haiku about rain", "prove that sqrt(2) is irrational", "translate 'cat' to French"]


def gateway(home: Path, mock: MockUpstream, **overrides: Any) -> tuple[TestClient, Services]:
    values = {
        "classifier.backend": "embedding",
        "selector.backend": SelectorSettings().backend,  # the shipped default, not the helpers' static
        "selector.options": {"seed": 3},
        **overrides,
    }
    settings = make_settings(home, MOCK_POOL, **values)
    services = build_services(settings, upstream=mock)
    return TestClient(create_app(settings, services)), services


def prompt_posteriors(services: Services) -> list[tuple[list[float], list[float]]]:
    """(alpha, beta) of every pool model for each probe prompt, as the selector would draw from."""
    assert services.selector is not None and services.embedder is not None
    vectors = services.embedder.encode(PROBES)
    out = []
    for vector in vectors:
        ctx = SelectionContext(
            classification=Classification(tier="medium", score=0.5, backend="test"),
            candidates=services.models,
            prompt_tokens=10,
            embedding=vector,
        )
        alpha, beta, *_ = services.selector._inputs(ctx, "medium", now=2e9)  # type: ignore[attr-defined]
        out.append((alpha.tolist(), beta.tolist()))
    return out


def rated_session(client: TestClient, n: int = 10) -> list[dict[str, Any]]:
    answers = [ask(client, f"{PROBES[i % 3]} (variant {i})") for i in range(n)]
    for i, answer in enumerate(answers):
        assert client.post("/feedback", json={"id": answer["id"], "score": (i % 4) / 3}).status_code == 200
    assert client.post("/feedback", json={"id": answers[0]["id"], "thumbs": "up"}).status_code == 200
    return answers


def test_default_decides_per_prompt_stores_vectors_and_restart_rebuilds_it(tmp_path: Path) -> None:
    client, services = gateway(tmp_path, MockUpstream())
    with client:
        assert services.selector is not None and services.selector.name == "neighbourhood"
        answers = rated_session(client)
        assert all(a["routing"]["method"].endswith("+thompson_neighbourhood") for a in answers)
        rows = client.post(
            "/admin/api/sql",
            json={"sql": "SELECT octet_length(embedding) FROM rewards WHERE NOT superseded"},
        ).json()["rows"]
        assert [r[0] for r in rows] == [384 * 4] * len(answers)
        snapshot = client.get("/admin/api/bandit").json()
        assert snapshot["neighbourhood"]["rows"] == len(answers)
        live, live_tier = prompt_posteriors(services), posteriors(client)
    restarted, services2 = gateway(tmp_path, MockUpstream())
    with restarted:
        rebuilt, rebuilt_tier = prompt_posteriors(services2), posteriors(restarted)
        assert restarted.get("/admin/api/bandit").json()["neighbourhood"]["rows"] == len(answers)
    assert rebuilt_tier == live_tier
    for (a1, b1), (a2, b2) in zip(live, rebuilt, strict=True):
        assert a2 == pytest.approx(a1, rel=1e-6) and b2 == pytest.approx(b1, rel=1e-6)
    # the feedback moved the per-prompt posteriors away from the tier posterior
    tier_alpha = [live_tier["medium"][m["name"]][0] for m in MOCK_POOL]
    assert any(not np.allclose(a, tier_alpha) for a, _ in live)


def test_cache_path_embeds_once_for_a_non_embedding_classifier_and_failures_carry_the_vector(
    tmp_path: Path,
) -> None:
    mock = MockUpstream()
    client, services = gateway(tmp_path, mock, **{"classifier.backend": "length", "cache.enabled": True})
    with client:
        mock.enqueue_error(UpstreamError("provider down"))
        answer = ask(client, "hello there, what is the capital of France?", model="compass/cheap")
        assert answer["routing"]["method"].endswith("+thompson_neighbourhood")
        rows = client.post(
            "/admin/api/sql",
            json={"sql": "SELECT source, reward, octet_length(embedding) FROM rewards"},
        ).json()["rows"]
        assert [tuple(r) for r in rows] == [("failure", 0.0, 384 * 4)]
        assert services.selector.memory.n == 1  # type: ignore[union-attr]


def test_without_the_embedder_the_default_is_tier_thompson(tmp_path: Path) -> None:
    client, services = gateway(tmp_path, MockUpstream(), **{"classifier.backend": "length"})
    with client:
        answer = ask(client, "hello")
        assert services.selector is not None and services.selector.name == "thompson"
        assert answer["routing"]["method"].endswith("+thompson")
        assert client.get("/admin/api/bandit").json()["selector"] == "thompson"


def test_fleet_store_keeps_the_vectors_and_a_fresh_replica_rebuilds_per_prompt(
    tmp_path: Path, pg_url: str
) -> None:
    client, services = gateway(tmp_path / "a", MockUpstream(), **{"storage.url": pg_url})
    with client:
        answers = rated_session(client, 6)
        live = prompt_posteriors(services)
    with psycopg.connect(pg_url) as con:
        lengths = con.execute(
            "SELECT octet_length(embedding) FROM rewards WHERE NOT superseded ORDER BY ts"
        ).fetchall()
        stored = con.execute("SELECT count(*) FROM requests WHERE embedding IS NOT NULL").fetchone()
    assert [r[0] for r in lengths] == [384 * 4] * len(answers)
    assert stored == (len(answers),)
    other, services_b = gateway(tmp_path / "b", MockUpstream(), **{"storage.url": pg_url})
    with other:
        rebuilt = prompt_posteriors(services_b)
    for (a1, b1), (a2, b2) in zip(live, rebuilt, strict=True):
        assert a2 == pytest.approx(a1, rel=1e-6) and b2 == pytest.approx(b1, rel=1e-6)


def test_compass_train_history_builds_memory_and_priors_from_the_gateways_own_feedback(
    tmp_path: Path,
) -> None:
    import json

    from click.testing import CliRunner

    from compass.cli.main import main
    from layers.bandit.neighbourhood import NeighbourhoodSelector

    client, services = gateway(tmp_path / "home", MockUpstream())
    with client:
        answers = rated_session(client, 9)
    scores = {a["id"]: (i % 4) / 3 for i, a in enumerate(answers)}
    scores[answers[0]["id"]] = 1.0  # the thumbs-up replaced the first score
    out = tmp_path / "trained"
    result = CliRunner().invoke(
        main,
        ["train", "--history", str(tmp_path / "home"), "--out", str(out / "priors.json"), "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["reward_rows"] == len(answers) and summary["memory_rows"] == len(answers)
    with np.load(out / "priors.npz") as memory:
        assert memory["vectors"].shape == (len(answers), 384)
        models = [str(m) for m in memory["models"]]
        observed = memory["rewards"][memory["mask"]]
        assert sorted(observed.tolist()) == pytest.approx(sorted(scores.values()))
        assert int(memory["mask"].sum()) == len(answers)
    priors = json.loads((out / "priors.json").read_text())
    n = sum(m["n"] for ctx in priors["contexts"].values() for m in ctx.values())
    assert n == len(answers)
    trained = NeighbourhoodSelector(
        {**summary["selector_options"], "seed": 1}, [services.pool[m] for m in services.pool]
    )
    assert trained.prior.n == len(answers) and set(models) <= set(services.pool)


def test_compass_train_history_reads_the_fleet_store_with_storage_url(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bare ``--history`` with ``COMPASS_DATABASE_URL``: the fleet's reward rows, vectors included."""
    import json

    from click.testing import CliRunner

    from compass.cli.main import main

    client, _ = gateway(tmp_path / "home", MockUpstream(), **{"storage.url": pg_url})
    with client:
        answers = rated_session(client, 6)
    monkeypatch.setenv("COMPASS_DATABASE_URL", pg_url)
    monkeypatch.setenv("COMPASS_HOME", str(tmp_path / "elsewhere"))  # nothing local to read
    out = tmp_path / "trained"
    result = CliRunner().invoke(main, ["train", "--out", str(out / "priors.json"), "--json", "--history"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["reward_rows"] == len(answers) and summary["memory_rows"] == len(answers)
    assert summary["history"].startswith("postgresql://") and "compass-test" not in summary["history"]
    with np.load(out / "priors.npz") as memory:
        assert memory["vectors"].shape == (len(answers), 384)


def test_the_drift_guard_moves_a_regressed_models_train_rows_and_admin_shows_it(tmp_path: Path) -> None:
    """Train rows (``memory_path``) say every model answers these prompts right; live feedback of
    0 on 36 answers makes the guard shift the served models' train evidence, ``/admin/api/bandit``
    reports it, and a restart rebuilds the same guard from the reward rows."""
    home = tmp_path / "home"
    client, services = gateway(home, MockUpstream())
    train_prompts = [f"{PROBES[i % 3]} (train {i})" for i in range(60)]
    models = [m["name"] for m in MOCK_POOL]
    memory = tmp_path / "memory.npz"
    with client:
        assert services.embedder is not None
        vectors = services.embedder.encode(train_prompts)
    np.savez(
        memory,
        vectors=vectors,
        models=np.array(models),
        rewards=np.ones((60, len(models))),
    )
    client, services = gateway(
        home, MockUpstream(), **{"selector.options": {"seed": 3, "memory_path": str(memory)}}
    )
    with client:
        before = prompt_posteriors(services)
        answers = [ask(client, f"{PROBES[i % 3]} (live {i})") for i in range(36)]
        for answer in answers:
            assert client.post("/feedback", json={"id": answer["id"], "score": 0}).status_code == 200
        drift = client.get("/admin/api/bandit").json()["drift"]
        after = prompt_posteriors(services)
    assert drift["acting"] is True
    served = {a["model"] for a in answers}
    shifted = {m for m, d in drift["models"].items() if d["shift"] > 0}
    assert shifted and shifted <= served
    for m in shifted:
        assert drift["models"][m]["mean_residual"] > 0.9 and drift["models"][m]["recent_events"] >= 10
        slot = models.index(m)
        for (a0, b0), (a1, b1) in zip(before, after, strict=True):  # its posterior mean fell
            assert a1[slot] / (a1[slot] + b1[slot]) < a0[slot] / (a0[slot] + b0[slot]) - 0.3
    client, services = gateway(
        home, MockUpstream(), **{"selector.options": {"seed": 3, "memory_path": str(memory)}}
    )
    with client:
        assert client.get("/admin/api/bandit").json()["drift"]["models"] == drift["models"]
