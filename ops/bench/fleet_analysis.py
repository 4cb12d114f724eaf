"""DuckDB SQL over the fleet store on 1M request rows: the mirror's load, refresh and query costs.

One throwaway PostgreSQL 15 (tests/postgres.py), ``--rows`` request rows (default 1M) of realistic
width (messages, answer, routing JSON) and one reward per 4 requests, spread over 23 days. Then,
side by side in one run:

* full load of an empty mirror (``FleetAnalysis``: COPY csv -> pyarrow -> DuckDB), rows/s;
* the alternative of reading rows through psycopg into Python and then Arrow (on a slice), rows/s;
* an incremental refresh with nothing new, and with 1,000 new rows;
* the README's three recipes: on the mirror (refresh + query, what ``POST /admin/api/sql`` costs)
  and the query alone;
* RSS of this process and the mirror file's size.

    python -m ops.bench.fleet_analysis [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from compass.storage.analysis import run_read_query
from compass.storage.fleet_analysis import FleetAnalysis
from compass.storage.pg_migrations import migrate
from compass.storage.postgres import connect
from ops.bench.common import write_json

README = Path(__file__).resolve().parents[2] / "README.md"


def recipes() -> list[str]:
    found = re.findall(r'compass sql "(.*?)"', README.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [" ".join(q.split()) for q in found if "FROM requests" in q]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


FILL = """
INSERT INTO requests (id, created_at, tenant, key_id, stream, requested_model, model, litellm_model,
    routing_method, tier, context, task_type, classifier, scores, routing, propensity, messages,
    messages_hash, params, response_content, finish_reason, prompt_tokens, completion_tokens,
    total_tokens, cost_usd, cache_status, classify_ms, select_ms, cache_ms, routing_ms, upstream_ms,
    total_ms, status, demo, ingested_at)
SELECT 'chatcmpl-' || md5(g::text), now() - interval '30 days' + g * interval '2 seconds',
    't' || (g %% 7), 'key_' || (g %% 13), g %% 5 = 0, 'auto', (ARRAY['small','medium','large'])[1 + g %% 3],
    'openai/m', 'bandit', (ARRAY['simple','medium','complex'])[1 + g %% 3], 'simple', 'qa', 'embedding',
    jsonb_build_object('simple', 0.6, 'medium', 0.3, 'complex', 0.1),
    jsonb_build_object('model', 'small', 'method', 'bandit', 'candidates', jsonb_build_array('small',
        'medium', 'large'), 'scores', jsonb_build_object('small', 0.5, 'medium', 0.3, 'large', 0.2)),
    0.33, jsonb_build_array(jsonb_build_object('role', 'user', 'content',
        'Question ' || g || ': explain the difference between a list and a tuple in Python, briefly.')),
    md5(g::text || 'm'), '{"max_tokens": 256}'::jsonb,
    repeat('An answer of typical length, with a few sentences in it. ', 6), 'stop', 40 + g %% 50,
    80 + g %% 200, 120 + g %% 250, 0.0001 * (g %% 17), (ARRAY['miss','exact','semantic','off'])[1 + g %% 4],
    1.2, 0.1, 0.4, 2.0, 30 + g %% 400, 40 + g %% 400, CASE WHEN g %% 50 = 0 THEN 502 ELSE 200 END, false,
    now() - interval '30 days' + g * interval '2 seconds'
FROM generate_series(%s::bigint, %s::bigint) AS g
"""
REWARDS = """
INSERT INTO rewards (id, created_at, ts, request_id, tenant, context, model, reward, source, ingested_at)
SELECT 'rw-' || md5(g::text), now() - interval '30 days', extract(epoch FROM now()) + g,
    'chatcmpl-' || md5(g::text), 't' || (g %% 7), 'simple', 'small', (g %% 5) / 4.0, 'feedback',
    now() - interval '30 days' + g * interval '2 seconds'
FROM generate_series(%s::bigint, %s::bigint, 4) AS g
"""


def fill(url: str, rows: int) -> float:
    start = time.perf_counter()
    con = connect(url)
    migrate(con)
    step = 100_000
    for lo in range(1, rows + 1, step):
        hi = min(rows, lo + step - 1)
        con.execute(FILL, [lo, hi])
        con.execute(REWARDS, [lo, hi])
    con.execute("VACUUM ANALYZE requests")
    con.execute("VACUUM ANALYZE rewards")
    con.close()
    return time.perf_counter() - start


def python_rows_per_s(url: str, n: int) -> float:
    """The alternative: rows through psycopg's Python objects, then ``pa.Table.from_pylist``."""
    import pyarrow as pa

    from compass.storage.history import REQUEST_COLUMNS

    con = connect(url)
    start = time.perf_counter()
    with con.cursor() as cur:
        cur.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests LIMIT %s", [n])
        names = [d.name for d in cur.description]
        records = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for record in records:  # JSON columns come back as Python objects; DuckDB wants text
        for name in ("scores", "routing", "messages", "params"):
            if record[name] is not None:
                record[name] = str(record[name])
    pa.Table.from_pylist(records)
    elapsed = time.perf_counter() - start
    con.close()
    return n / elapsed


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - start) * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from tests.postgres import start_cluster

    cluster = start_cluster()
    try:
        url = cluster.url()
        fill_s = fill(url, args.rows)
        print(f"filled {args.rows} rows in {fill_s:.1f} s", flush=True)
        result: dict[str, Any] = {"rows": args.rows, "fill_s": fill_s, "cpus": os.cpu_count()}
        with tempfile.TemporaryDirectory() as tmp:
            mirror = FleetAnalysis(url, Path(tmp) / "mirror.duckdb")
            rss0 = rss_mib()
            mirror.open_sync()
            db = mirror._db
            load_ms, loaded = timed(db.run_sync, mirror.refresh_sync)
            result["full_load"] = {
                "ms": load_ms,
                "rows": loaded,
                "rows_per_s": loaded / (load_ms / 1000),
                "rss_mib_before": rss0,
                "rss_mib_after": rss_mib(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "file_mib": (Path(tmp) / "mirror.duckdb").stat().st_size / 2**20,
            }
            print("full load", result["full_load"], flush=True)
            slice_n = min(100_000, args.rows)
            result["python_rows_alternative_rows_per_s"] = python_rows_per_s(url, slice_n)
            empty = sorted(timed(db.run_sync, mirror.refresh_sync)[0] for _ in range(args.repeat))
            result["refresh_nothing_new_ms_p50"] = empty[len(empty) // 2]
            con = connect(url)
            new = []
            for r in range(args.repeat):
                lo = args.rows + 1 + r * 1000
                fresh = FILL.replace("now() - interval '30 days' + g * interval '2 seconds'\n", "now()\n")
                con.execute(fresh, [lo, lo + 999])
                new.append(timed(db.run_sync, mirror.refresh_sync)[0])
            con.close()
            result["refresh_1000_new_ms_p50"] = sorted(new)[len(new) // 2]
            per_recipe = []
            for sql in recipes():
                query_only = sorted(
                    timed(db.run_sync, run_read_query, sql, 1000)[0] for _ in range(args.repeat)
                )
                both = sorted(
                    timed(
                        db.run_sync,
                        lambda con, s=sql: (mirror.refresh_sync(con), run_read_query(con, s, 1000)),
                    )[0]
                    for _ in range(args.repeat)
                )
                per_recipe.append(
                    {
                        "sql": sql[:60],
                        "query_ms_p50": query_only[len(query_only) // 2],
                        "refresh_and_query_ms_p50": both[len(both) // 2],
                    }
                )
            result["recipes"] = per_recipe
            result["rss_mib_end"] = rss_mib()
            mirror.close()
        print(result, flush=True)
        write_json("fleet_analysis", result)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
