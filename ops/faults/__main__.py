"""``python -m ops.faults``: fault scenarios (a)-(d) on the direct and LiteLLM upstream paths.

Prints one PASS/FAIL line per check, writes ops/bench/results/faults.json, exits 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import sys
import time

from ops.bench.common import write_json
from ops.fake_upstream import spawn_fake_upstream
from ops.faults.harness import home_dir, realistic_config
from ops.faults.scenarios import SCENARIOS, FaultOptions, run_scenario


def main(argv: list[str] | None = None) -> int:
    defaults = FaultOptions()
    parser = argparse.ArgumentParser(prog="python -m ops.faults", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"any of {', '.join(SCENARIOS)}")
    parser.add_argument("--paths", default="direct,litellm", help="upstream paths: direct, litellm")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="for (a)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--timeout", type=float, default=defaults.timeout_s, help="gateway's upstream timeout"
    )
    parser.add_argument("--hang", type=float, default=defaults.hang_s, help="how long a hung upstream waits")
    parser.add_argument("--error-rate", type=float, default=defaults.error_rate)
    parser.add_argument("--timeout-rate", type=float, default=defaults.timeout_rate)
    parser.add_argument("--out", default="faults", help="results/<name>.json; '' to skip")
    args = parser.parse_args(argv)
    options = FaultOptions(
        requests=args.requests,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        hang_s=args.hang,
        error_rate=args.error_rate,
        timeout_rate=args.timeout_rate,
    )
    if options.hang_s <= options.timeout_s:
        parser.error("--hang must exceed --timeout, or the 'timeouts' never time out")
    upstream = spawn_fake_upstream(realistic_config())
    results = []
    try:
        for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
            for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
                started = time.monotonic()
                print(f"--- {name} ({path} upstream path)", flush=True)
                verdicts = run_scenario(name, upstream.url, options, path, home_dir(f"faults-{name}"))
                for verdict in verdicts:
                    print(verdict.line(), flush=True)
                results.append(
                    {
                        "scenario": name,
                        "path": path,
                        "seconds": round(time.monotonic() - started, 2),
                        "passed": all(v.passed or v.skipped for v in verdicts),
                        "checks": [v.__dict__ for v in verdicts],
                    }
                )
    finally:
        upstream.terminate()
    passed = all(r["passed"] for r in results)
    print(
        f"\n{'PASS' if passed else 'FAIL'}: {sum(r['passed'] for r in results)}/{len(results)} scenario runs"
    )
    if args.out:
        print(
            f"wrote {write_json(args.out, {'options': options.__dict__, 'passed': passed, 'runs': results})}"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
