"""Offline evaluation of Layer 2: replay on the shipped bundle, IPS on a synthetic log, RouteLLM metrics, CLI.

Nothing here needs ../shared or an embedding model: the bundle (data/replay/) carries its vectors.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from compass.cli.main import main
from compass.replay.data import BUNDLE, load_dataset
from compass.replay.history import evaluate_history, read_history
from compass.replay.policies import (
    KNN,
    Default,
    DefaultTrained,
    Env,
    RandomPolicy,
    Static,
    Thompson,
    ThompsonFitted,
    ThompsonPriorOnly,
)
from compass.replay.report import ReplayOptions, prepare
from compass.replay.simulate import replay, routellm_metrics, score
from compass.storage.migrations import migrate
from layers.bandit.base import RewardEvent, SelectionContext
from layers.bandit.thompson import ThompsonSelector
from layers.classifier.base import Classification
from layers.types import TIERS, ModelSpec

SEEDS = range(5)


@pytest.fixture(scope="module")
def prep() -> dict:
    return prepare(ReplayOptions(dataset="bundle", classifier="length"))


def env_for(prep: dict, weight: float, seed: int, workdir: Path) -> Env:
    return Env(
        prep["data"],
        prep["test_cls"],
        prep["train_cls"],
        prep["test_vecs"],
        prep["train_vecs"],
        weight,
        seed,
        workdir,
    )


def mean_utility(prep: dict, policy: type, weight: float, workdir: Path) -> tuple[float, float]:
    """Mean and standard error over SEEDS of a policy's utility on the bundle's test stream."""
    values = []
    for seed in SEEDS:
        env = env_for(prep, weight, seed, workdir)
        values.append(score(replay(policy, env), env)["utility"])
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


# ---- the shipped bundle -------------------------------------------------------------------------


def test_bundle_is_small_and_self_contained() -> None:
    assert BUNDLE.stat().st_size < 1 << 20
    data = load_dataset("bundle")
    assert data.strong_weak is not None and set(data.strong_weak) == set(data.models)
    for split in (data.train, data.test):
        assert split.rewards.shape == split.costs.shape == (len(split), 2)
        assert split.vectors is not None and split.vectors.shape == (len(split), 384)
        assert np.allclose(np.linalg.norm(split.vectors, axis=1), 1.0, atol=1e-5)
        assert set(np.unique(split.rewards)) <= {0.0, 1.0}
    assert (Path(BUNDLE).parent / "README.md").read_text().count("Apache-2.0") >= 1


def test_thompson_beats_random_and_static_tier_map(prep: dict, tmp_path: Path) -> None:
    """Reward minus cost, averaged over 5 stream orders, at the balanced and a cost-leaning weight.

    Tiers come from the length rule (the original Compass classifier and the gateway's fallback),
    so the test does not hang on the embedding head's weights. ``thompson`` is the gateway's
    default (tier prior, learning online); it must also beat itself without learning.
    ``thompson_fitted_prior`` adds the priors `compass train` fits on the train split.
    """
    for weight in (0.3, 0.5):
        for ours_cls, baselines in (
            (Thompson, (RandomPolicy, Static, ThompsonPriorOnly)),
            (ThompsonFitted, (RandomPolicy, Static)),
            (Default, (RandomPolicy,)),  # the server's default, cold (vs static: +0.007, not significant)
            (DefaultTrained, (RandomPolicy, Static)),
        ):
            ours, se = mean_utility(prep, ours_cls, weight, tmp_path)
            for baseline in baselines:
                theirs, se_b = mean_utility(prep, baseline, weight, tmp_path)
                margin = 2 * float(np.hypot(se, se_b))
                assert ours > theirs + margin, (weight, ours_cls.name, baseline.name, ours, theirs, margin)


def test_offline_knowledge_comes_from_train_only(prep: dict, tmp_path: Path) -> None:
    """Scrambling the TEST rewards changes nothing a policy fitted offline knows before it starts."""
    env = env_for(prep, 0.3, 0, tmp_path)
    knn = KNN(env).estimate.copy()
    fitted = Path(ThompsonFitted(env).selector.options["priors_path"]).read_text()
    data = prep["data"]
    original = data.test.rewards
    try:
        data.test.rewards = np.random.default_rng(0).permutation(original)
        (tmp_path / "again").mkdir()
        env2 = env_for(prep, 0.3, 0, tmp_path / "again")
        assert np.array_equal(KNN(env2).estimate, knn)
        assert Path(ThompsonFitted(env2).selector.options["priors_path"]).read_text() == fitted
    finally:
        data.test.rewards = original


# ---- RouteLLM metrics on a hand-computed toy ----------------------------------------------------


def test_apgr_and_cpt_on_a_hand_computed_toy() -> None:
    # weak 0.5, strong 0.9; sweep (20 %, 0.7), (50 %, 0.8); closed with (0 %, 0.5) and (100 %, 0.9).
    m = routellm_metrics([(50.0, 0.8), (20.0, 0.7)], weak_acc=0.5, strong_acc=0.9)
    # AUC = 0.2·(0.5+0.7)/2 + 0.3·(0.7+0.8)/2 + 0.5·(0.8+0.9)/2 = 0.12 + 0.225 + 0.425 = 0.77
    assert m["AUC"] == pytest.approx(0.77)
    assert m["APGR"] == pytest.approx((0.77 - 0.5) / (0.9 - 0.5))  # 0.675
    assert m["CPT(50%)"] == pytest.approx(20.0)  # 0.7 is reached exactly at 20 %
    assert m["CPT(80%)"] == pytest.approx(60.0)  # 0.82: a fifth of the way from 50 % to 100 %
    mix = [(p * 100, 0.5 + 0.4 * p) for p in np.linspace(0, 1, 11)]
    r = routellm_metrics(mix, 0.5, 0.9)
    assert (r["APGR"], r["CPT(50%)"], r["CPT(80%)"]) == pytest.approx((0.5, 50.0, 80.0))


def test_the_bootstrap_apgr_reads_a_sweep_from_per_prompt_choices() -> None:
    """ops/bench/apgr_noise.py: the sweep points come from each prompt's chosen arm."""
    from ops.bench.apgr_noise import apgr

    # model 0 strong (always right), model 1 weak (right on the first half)
    rewards = np.array([[1.0, 1.0]] * 5 + [[1.0, 0.0]] * 5)
    idx = np.arange(10)
    weak_only, strong_where_needed = np.ones((1, 10), np.int64), np.array([[1] * 5 + [0] * 5])
    # strong on exactly the prompts weak fails: accuracy 1.0 at 50 % strong calls
    assert apgr([weak_only, strong_where_needed], rewards, 0, 1, idx) == pytest.approx(
        routellm_metrics([(0.0, 0.5), (50.0, 1.0)], 0.5, 1.0)["APGR"]
    )
    # two stream orders average: one all-weak, one all-strong is the point (50 %, 0.75): random
    both = np.stack([np.ones(10, np.int64), np.zeros(10, np.int64)])
    assert apgr([both], rewards, 0, 1, idx) == pytest.approx(0.5)


def test_metrics_match_routellm_formulas_on_a_monotone_sweep() -> None:
    """Without anchors, the same numbers as RouteLLM's np.trapz / np.interp code path."""
    xs = np.array([0.0, 10.0, 35.0, 60.0, 100.0])
    ys = np.array([0.61, 0.66, 0.72, 0.77, 0.80])
    weak, strong = 0.60, 0.81
    m = routellm_metrics(list(zip(xs, ys, strict=True)), weak, strong, anchor=False)
    auc = float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs / 100)) / 2)
    assert m["APGR"] == pytest.approx((auc - weak) / (strong - weak))
    for pct, key in ((0.5, "CPT(50%)"), (0.8, "CPT(80%)")):
        assert m[key] == pytest.approx(np.interp(pct * (strong - weak) + weak, ys, xs))


# ---- IPS on a synthetic log ---------------------------------------------------------------------

POOL = [
    ModelSpec(
        name="small",
        litellm_model="x/small",
        tier="simple",
        input_price_per_mtok=0.1,
        output_price_per_mtok=0.4,
    ),
    ModelSpec(
        name="mid", litellm_model="x/mid", tier="medium", input_price_per_mtok=1.0, output_price_per_mtok=4.0
    ),
    ModelSpec(
        name="big",
        litellm_model="x/big",
        tier="complex",
        input_price_per_mtok=10.0,
        output_price_per_mtok=40.0,
    ),
]
NAMES = [m.name for m in POOL]
MEANS = {"simple": [0.8, 0.85, 0.9], "medium": [0.3, 0.7, 0.85], "complex": [0.1, 0.4, 0.8]}
LOGGING = {"simple": [0.6, 0.3, 0.1], "medium": [0.2, 0.5, 0.3], "complex": [0.1, 0.2, 0.7]}
TIER_P = [0.5, 0.3, 0.2]


def synthetic_log(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """A history file written by a known stochastic logging policy, plus rows IPS must skip."""
    rng = np.random.default_rng(seed)
    base = dt.datetime(2025, 1, 1)
    req: dict[str, list] = {
        k: []
        for k in (
            "id",
            "created_at",
            "tenant",
            "stream",
            "model",
            "tier",
            "context",
            "routing",
            "propensity",
            "cache_status",
            "prompt_tokens",
            "status",
        )
    }
    rew: dict[str, list] = {
        k: []
        for k in (
            "id",
            "created_at",
            "ts",
            "request_id",
            "context",
            "model",
            "reward",
            "source",
            "superseded",
        )
    }

    def reward_row(
        rid: str, ts: float, tier: str, model: str, reward: float, source: str, old: bool = False
    ) -> None:
        for key, value in zip(
            rew,
            (
                f"w{len(rew['id'])}",
                base + dt.timedelta(seconds=ts),
                ts,
                rid,
                tier,
                model,
                reward,
                source,
                old,
            ),
            strict=True,
        ):
            rew[key].append(value)

    for i in range(n):
        tier = TIERS[rng.choice(3, p=TIER_P)]
        arm = int(rng.choice(3, p=LOGGING[tier]))
        rid = f"r{i}"
        ts = float(i)
        cached = i % 50 == 7  # served from the cache: the chosen model never answered
        answered = NAMES[(arm + 1) % 3] if i % 40 == 3 else NAMES[arm]  # a fallback answered instead
        routing = {"model": NAMES[arm], "candidates": NAMES, "cost_weight": None}
        for key, value in zip(
            req,
            (
                rid,
                base + dt.timedelta(seconds=ts),
                "t",
                False,
                answered,
                tier,
                tier,
                json.dumps(routing),
                LOGGING[tier][arm],
                "exact" if cached else "miss",
                300,
                200,
            ),
            strict=True,
        ):
            req[key].append(value)
        if answered != NAMES[arm]:
            reward_row(rid, ts + 0.1, tier, NAMES[arm], 0.0, "failure")
            reward_row(rid, ts + 0.5, tier, answered, float(rng.random() < 0.5), "feedback")
            continue
        reward = float(rng.random() < MEANS[tier][arm])
        reward_row(rid, ts + 0.2, tier, NAMES[arm], 1.0 - reward, "feedback", old=True)  # superseded
        reward_row(rid, ts + 0.5, tier, NAMES[arm], reward, "feedback")
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("req", pa.table(req))
    con.execute(f"INSERT INTO requests ({', '.join(req)}) SELECT * FROM req")
    con.register("rew", pa.table(rew))
    con.execute(f"INSERT INTO rewards ({', '.join(rew)}) SELECT * FROM rew")
    con.close()
    return {"cached": sum(i % 50 == 7 for i in range(n))}


def true_value(pi: dict[str, np.ndarray]) -> float:
    """Expected reward of a policy choosing with ``pi[tier]`` under MEANS (fallback rows count 0)."""
    fallback = 1 / 40  # those requests score the chosen model's failure
    return sum(p_t * float(np.dot(pi[t], MEANS[t])) for p_t, t in zip(TIER_P, TIERS, strict=True)) * (
        1 - fallback
    )


def test_ips_recovers_a_known_policy_value_on_a_synthetic_log(tmp_path: Path) -> None:
    db = tmp_path / "compass.duckdb"
    n = 4000
    expected = synthetic_log(db, n)
    static = evaluate_history(db, POOL, "static", learn=False)
    # The static map sends each tier to its own model: small / mid / big.
    truth = true_value({t: np.eye(3)[k] for k, t in enumerate(TIERS)})
    assert static["skipped"]["cached"] == expected["cached"]
    assert static["n"] == n - expected["cached"]
    assert abs(static["ips"] - truth) < 4 * static["ips_se"] + 0.01
    assert abs(static["snips"] - truth) < 0.04
    # A frozen Thompson candidate: its true value comes from its own selection probabilities.
    candidate = ThompsonSelector({"seed": 5}, POOL)
    pi = {
        t: candidate.shares(
            SelectionContext(
                classification=Classification(tier=t, score=0.0, backend="t"),
                candidates=POOL,
                prompt_tokens=300,
            ),
            40_000,
        )
        for t in TIERS
    }
    thompson = evaluate_history(db, POOL, "thompson", {"seed": 5}, learn=False, samples=256)
    assert abs(thompson["ips"] - true_value(pi)) < 4 * thompson["ips_se"] + 0.01


def test_history_is_read_from_a_copy_while_a_server_holds_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "compass.duckdb"
    synthetic_log(db, 60)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        requests, events, how = read_history(db)
        assert "copy" in how and len(requests) == 60 and events
    finally:
        holder.communicate("", timeout=30)


def test_logged_propensities_stay_unbiased_with_rewards_between_decisions() -> None:
    """Above 16 models the selector reuses a bank of draws between decisions; the logged
    propensity (hits + 1) / 65 must still average to its expectation (64·p + 1) / 65."""
    pool = [
        ModelSpec(
            name=f"m{i}",
            litellm_model=f"x/m{i}",
            tier=TIERS[i % 3],
            input_price_per_mtok=0.2 * (i + 1),
            output_price_per_mtok=0.5 * (i + 1),
        )
        for i in range(24)
    ]
    names = [m.name for m in pool]
    sel = ThompsonSelector({"seed": 3, "propensity_samples": 64}, pool)
    ref = ThompsonSelector({"seed": 4, "propensity_samples": 0}, pool)
    ctx = SelectionContext(
        classification=Classification(tier="medium", score=0.5, backend="t"),
        candidates=pool,
        prompt_tokens=300,
        cost_weight=0.3,
    )
    errors = []
    for k in range(300):
        chosen = sel.select(ctx)
        ref._states = sel._states  # same posteriors, independent draws
        p = float(ref.shares(ctx, 4000)[names.index(chosen.model)])
        errors.append(float(chosen.propensity or 0) - (64 * p + 1) / 65)
        reward = float(k % 3 != 0)
        sel.observe(
            RewardEvent(request_id=f"r{k}", context="medium", model=chosen.model, reward=reward, ts=k * 1.0)
        )
    assert sel._banks, "the bank path was not exercised"
    assert abs(np.mean(errors)) < 0.015
    assert np.mean(np.abs(errors)) < 0.08


# ---- the CLI, end to end ------------------------------------------------------------------------


def test_replay_cli_json_on_the_bundle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "replay",
            "--data",
            "bundle",
            "--json",
            "--seeds",
            "0,1",
            "--classifier",
            "length",
            "--cost-weights",
            "0,0.3,1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    policies = {r["policy"] for r in body["runs"]}
    assert {
        "random",
        "static_tier_map",
        "always_cheapest",
        "always_best",
        "layer1_prior_no_learning",
        "epsilon_greedy",
        "knn_minilm",
        "thompson",
    } <= policies
    assert any("TRAIN split only" in note for note in body["notes"])
    assert body["routellm"]["by_scope"]["all"]["metrics"]["thompson"]["APGR"] is not None
    assert {p.name for p in out.iterdir()} >= {
        "replay_routellm-subset.json",
        "replay_routellm-subset.md",
        "replay_routellm-subset_regret.png",
        "replay_routellm-subset_frontier.png",
    }


def test_replay_cli_history_json(tmp_path: Path) -> None:
    db = tmp_path / "compass.duckdb"
    synthetic_log(db, 300)
    result = CliRunner().invoke(
        main,
        ["replay", "--history", str(tmp_path), "--candidate", "static", "--no-learn", "--json"],
        env={"COMPASS_HOME": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["routed_requests"] == 300 and body["n"] > 250 and 0 <= body["snips"] <= 1
    assert "read-only" in body["read"]


def test_train_writes_priors_the_selector_loads(tmp_path: Path) -> None:
    path = tmp_path / "priors.json"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            "bundle",
            "--classifier",
            "length",
            "--out",
            str(path),
            "--rename",
            "gpt-4-1106-preview=big",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    assert doc["source"]["split"] == "train"
    data = load_dataset("bundle")
    tokens = np.array([max(1, len(p) // 4) for p in data.train.prompts])
    medium = (tokens > 64) & (tokens < 512)  # the length rule's medium tier
    strong = data.models.index("gpt-4-1106-preview")
    n, acc = int(medium.sum()), float(data.train.rewards[medium, strong].mean())
    pool = [ModelSpec(name="big", litellm_model="x/big", tier="complex")]
    alpha, beta = ThompsonSelector({"priors_path": str(path)}, pool).posterior("medium")
    assert alpha[0] == pytest.approx(1 + n * acc) and beta[0] == pytest.approx(1 + n * (1 - acc))


def test_missing_shared_data_is_a_clean_error() -> None:
    with tempfile.TemporaryDirectory() as empty:
        result = CliRunner().invoke(main, ["replay", "--data", "routerbench", "--data-dir", empty, "--json"])
    assert result.exit_code != 0 and "routerbench" in result.output
