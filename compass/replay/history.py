"""Off-policy evaluation on the gateway's own logs: IPS and self-normalised IPS (SNIPS).

Each routed request row records the selection's ``propensity`` p (the probability the logging
policy gave the model it chose) and, in ``routing.model``, that chosen model; ``requests.model``
is the model that finally answered, which differs after a fallback. The reward of the chosen
model is its non-superseded ``feedback`` row, else its ``failure`` row (a zero). A candidate
policy π then scores ``w = π(chosen | request) / p`` per request:

    IPS   = Σ w·r / n        (unbiased when p is right and p > 0 wherever π > 0)
    SNIPS = Σ w·r / Σ w      (a little bias, much less variance)

π of a Thompson candidate is a Monte Carlo share of its own posterior draws. By default the
candidate folds in the rewards logged BEFORE each request (as it would have learned live, an
approximation: it learns from the logger's choices, not its own); ``learn=False`` freezes it.
Requests served from the cache are left out (the chosen model never answered), and so are
requests without a reward: if feedback is given more often for some answers than for others,
every estimate here inherits that selection.

DuckDB lets one process hold a file for writing, and a read-only open fails while the server
runs, so the file (and its WAL) is then copied and the copy is read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from layers.bandit.base import RewardEvent, SelectionContext, Selector, build_selector
from layers.classifier.base import Classification
from layers.types import TIER_INDEX, ModelSpec

DB_NAME = "compass.duckdb"
_CACHED = ("exact", "semantic")


def resolve_db(path: str | Path) -> Path:
    """A ``.duckdb`` file, or a COMPASS_HOME directory holding ``compass.duckdb``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / DB_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no history database at {p}")
    return p


def read_history(path: Path) -> tuple[list[dict[str, Any]], list[RewardEvent], str]:
    """(routed requests with a propensity, reward events, how the file was read)."""
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
        how = f"opened {path} read-only"
    except duckdb.IOException:  # the server holds the write lock: read a copy instead
        with tempfile.TemporaryDirectory(prefix="compass-history-") as tmp:
            copy = Path(tmp) / path.name
            shutil.copy2(path, copy)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                shutil.copy2(wal, copy.with_name(copy.name + ".wal"))
            con = duckdb.connect(str(copy), read_only=True)
            try:
                return (
                    *_query(con),
                    f"{path} is locked by a running server; read a copy (rows the server "
                    "has not flushed yet are not in it)",
                )
            finally:
                con.close()
    try:
        return (*_query(con), how)
    finally:
        con.close()


def read_fleet_history(url: str) -> tuple[list[dict[str, Any]], list[RewardEvent], str]:
    """The fleet store's history, through the same DuckDB query (``compass.storage.fleet_analysis``)."""
    from compass.storage.fleet_analysis import query_fleet
    from compass.storage.postgres import redact

    requests, events = query_fleet(url, _query)
    return requests, events, f"read the fleet store {redact(url)} through a DuckDB mirror"


def _query(con: Any) -> tuple[list[dict[str, Any]], list[RewardEvent]]:
    rows = con.execute(
        """
        SELECT id, epoch(created_at), context, tier, task_type, routing, propensity, cache_status,
               prompt_tokens
        FROM requests
        WHERE propensity IS NOT NULL AND propensity > 0 AND context IS NOT NULL AND routing IS NOT NULL
        ORDER BY created_at, id
        """
    ).fetchall()
    events = reward_events(con)
    keys = [
        "id",
        "ts",
        "context",
        "tier",
        "task_type",
        "routing",
        "propensity",
        "cache_status",
        "prompt_tokens",
    ]
    requests = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        routing = item["routing"]
        item["routing"] = json.loads(routing) if isinstance(routing, str) else (routing or {})
        requests.append(item)
    return requests, events


def reward_events(con: Any) -> list[RewardEvent]:
    """The fold's events, with each request's vector (NULL in files from before migration 7)."""
    columns = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'rewards'"
        ).fetchall()
    }
    vector = "embedding" if "embedding" in columns else "NULL"
    rows = con.execute(
        f"SELECT request_id, context, model, reward, ts, source, {vector} FROM rewards "
        "WHERE NOT superseded AND context <> 'unrouted' ORDER BY ts, id"
    ).fetchall()
    return [
        RewardEvent(
            request_id=r[0],
            context=r[1],
            model=r[2],
            reward=float(r[3]),
            ts=float(r[4]),
            source=r[5],
            embedding=None if r[6] is None else bytes(r[6]),
        )
        for r in rows
    ]


def chosen_rewards(events: list[RewardEvent]) -> dict[tuple[str, str], float]:
    """(request, model) → reward, feedback rows winning over failure rows."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for e in events:
        rank = 0 if e.source == "feedback" else 1
        key = (e.request_id, e.model)
        if key not in out or rank <= out[key][0]:
            out[key] = (rank, e.reward)
    return {k: v[1] for k, v in out.items()}


def estimate(weights: np.ndarray, rewards: np.ndarray) -> dict[str, float]:
    """IPS and SNIPS of ``weights = π/p`` and ``rewards``, with IPS's standard error."""
    n = len(weights)
    if n == 0:
        return {
            "n": 0,
            "ips": float("nan"),
            "snips": float("nan"),
            "ips_se": float("nan"),
            "effective_sample_size": 0.0,
            "max_weight": 0.0,
        }
    wr = weights * rewards
    total = float(weights.sum())
    return {
        "n": n,
        "ips": float(wr.mean()),
        "ips_se": float(wr.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "snips": float(wr.sum() / total) if total > 0 else float("nan"),
        "effective_sample_size": float(total**2 / float((weights**2).sum())) if total > 0 else 0.0,
        "max_weight": float(weights.max()),
    }


def probability(policy: Selector, ctx: SelectionContext, model: str, samples: int) -> float:
    """π(model | ctx): Monte Carlo shares for a Thompson candidate, the deterministic choice otherwise."""
    shares = getattr(policy, "shares", None)
    if shares is not None:
        return float(shares(ctx, samples)[[m.name for m in ctx.candidates].index(model)])
    return 1.0 if policy.select(ctx).model == model else 0.0


def evaluate_history(
    path: str | Path,
    pool: list[ModelSpec] | None = None,
    selector: str = "thompson",
    options: dict[str, Any] | None = None,
    cost_weight: float | None = None,
    learn: bool = True,
    samples: int = 512,
) -> dict[str, Any]:
    """IPS / SNIPS value of a candidate selector on the logged (request, chosen model, reward) triples."""
    if str(path).startswith(("postgresql://", "postgres://")):  # storage.url: the whole fleet's history
        from compass.storage.postgres import redact

        db: Any = redact(str(path))
        requests, events, how = read_fleet_history(str(path))
    else:
        db = resolve_db(path)
        requests, events, how = read_history(db)
    rewards = chosen_rewards(events)
    names = sorted(
        {r["routing"].get("model") for r in requests if r["routing"].get("model")}
        | {n for r in requests for n in r["routing"].get("candidates") or []}
    )
    pool_note = "pool from the configuration"
    if not pool:  # prices and tiers unknown: no cost term, a flat tier prior
        pool = [ModelSpec(name=n, litellm_model=n) for n in names]
        pool_note = "pool = models seen in the log (no prices or tiers: cost term and tier prior are flat)"
    policy = build_selector(selector, {"seed": 0, **(options or {})}, pool)
    by_name = {m.name: m for m in pool}
    cursor = 0
    weights, values, logged = [], [], []
    skipped = {"cached": 0, "no_reward": 0, "model_not_in_pool": 0}
    for req in requests:
        if learn:
            while cursor < len(events) and events[cursor].ts < req["ts"]:
                policy.observe(events[cursor])
                cursor += 1
        chosen = req["routing"].get("model")
        if req["cache_status"] in _CACHED:
            skipped["cached"] += 1
            continue
        if (req["id"], chosen) not in rewards:
            skipped["no_reward"] += 1
            continue
        candidates = [by_name[n] for n in req["routing"].get("candidates") or [] if n in by_name] or pool
        if chosen not in {m.name for m in candidates}:
            skipped["model_not_in_pool"] += 1
            continue
        tier = req["tier"] if req["tier"] in TIER_INDEX else "medium"
        ctx = SelectionContext(
            classification=Classification(
                tier=tier, score=0.0, backend="history", task_type=req["task_type"]
            ),
            candidates=candidates,
            prompt_tokens=int(req["prompt_tokens"] or 100),
            cost_weight=cost_weight if cost_weight is not None else req["routing"].get("cost_weight"),
        )
        weights.append(probability(policy, ctx, chosen, samples) / float(req["propensity"]))
        values.append(rewards[(req["id"], chosen)])
        logged.append(values[-1])
    result = estimate(np.array(weights, dtype=float), np.array(values, dtype=float))
    return {
        "database": str(db),
        "read": how,
        "routed_requests": len(requests),
        "skipped": skipped,
        "logged_policy_value": float(np.mean(logged)) if logged else float("nan"),
        **result,
        "candidate": {
            "selector": selector,
            "options": options or {},
            "cost_weight": cost_weight,
            "learn": learn,
        },
        "pool": pool_note,
        "notes": [
            "action = routing.model (the model Layer 2 chose), p = requests.propensity recorded with it",
            "reward = the chosen model's non-superseded feedback row, else its failure row (0); "
            "cache hits skipped",
            "the candidate folds the rewards logged before each request (the logger's data, not its own)"
            if learn
            else "the candidate is frozen (learn=False): its posteriors stay at its priors",
        ],
    }
