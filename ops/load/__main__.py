"""``python -m ops.load``: sustained load on a real gateway; prints a table, writes results/load.json."""

from __future__ import annotations

import argparse
import sys

from ops.load.run import LoadOptions, report, run


def main(argv: list[str] | None = None) -> int:
    defaults = LoadOptions()
    parser = argparse.ArgumentParser(prog="python -m ops.load", description=__doc__)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--stream-share", type=float, default=defaults.stream_share)
    parser.add_argument("--feedback-share", type=float, default=defaults.feedback_share)
    parser.add_argument("--repeat-share", type=float, default=defaults.repeat_share)
    parser.add_argument("--sample-every", type=float, default=defaults.sample_every_s, help="RSS, seconds")
    parser.add_argument("--speedup", type=float, default=defaults.speedup, help="divide upstream latency")
    parser.add_argument(
        "--fast-layers", action="store_true", help="length classifier and no cache (no MiniLM load)"
    )
    parser.add_argument(
        "--cache-max-entries",
        type=int,
        default=defaults.cache_max_entries,
        help="cap the cache so it is full early (0: the gateway default)",
    )
    parser.add_argument("--durability", choices=["batched", "strict"], default=defaults.durability)
    parser.add_argument("--max-rss-slope", type=float, default=defaults.max_rss_slope_mib_per_min)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out, help="results/<name>.json; '' to skip")
    args = parser.parse_args(argv)
    options = LoadOptions(
        clients=args.clients,
        duration_s=args.duration,
        stream_share=args.stream_share,
        feedback_share=args.feedback_share,
        repeat_share=args.repeat_share,
        sample_every_s=args.sample_every,
        speedup=args.speedup,
        full_layers=not args.fast_layers,
        durability=args.durability,
        cache_max_entries=args.cache_max_entries or None,
        max_rss_slope_mib_per_min=args.max_rss_slope,
        seed=args.seed,
        out=args.out or None,
    )
    summary = run(options)
    report(summary, options)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
