"""Build data/replay/routellm_subset.json.gz, the replay bundle the tests use (no ../shared needed).

    python ops/scripts/build_replay_bundle.py [--data-dir ../shared/data] [--train 400] [--test 400]

A seeded subset of RouteLLM's MMLU and GSM8K outcomes (lm-sys/RouteLLM, Apache-2.0): prompts,
both models' correctness, list-price costs, and int8-quantised MiniLM embeddings (so the test
loads no model). The same seed, source and cached vectors give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from compass.replay.data import BUNDLE, load_bundle, load_dataset, write_bundle  # noqa: E402
from compass.replay.features import embeddings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=None, help="shared data folder (default ../shared/data)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BUNDLE)
    args = parser.parse_args()
    data = load_dataset("routellm", args.data_dir)
    train_vecs, test_vecs, source = embeddings(data, data.name)
    write_bundle(
        data,
        args.out,
        args.train,
        args.test,
        seed=args.seed,
        vectors=(train_vecs, test_vecs),
        tasks=("mmlu", "gsm8k"),
    )
    back = load_bundle(args.out)
    size = args.out.stat().st_size
    print(
        f"wrote {args.out} ({size / 1024:.0f} KiB): {len(back.train)} train / {len(back.test)} test prompts, "
        f"embeddings from {source}"
    )
    if size > 1 << 20:
        raise SystemExit("bundle is over 1 MiB: lower --train/--test")


if __name__ == "__main__":
    main()
