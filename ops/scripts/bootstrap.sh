#!/usr/bin/env bash
# Create .venv and install LLM Compass with its test dependencies, from scratch, pinned.
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# Everything else is installed within requirements.lock (refresh it: bash ops/scripts/lock.sh).
# COMPASS_UNPINNED=1 installs the newest releases instead: a deliberate upgrade check.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${COMPASS_TORCH_VERSION:-2.13.0}"
if [ "${COMPASS_UNPINNED:-}" = 1 ]; then
  echo "COMPASS_UNPINNED=1: installing the newest releases, not requirements.lock"
  .venv/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
else
  .venv/bin/python -m pip install --quiet --constraint requirements.lock -e ".[dev]"
fi
echo "installed: $(.venv/bin/compass --version)"
