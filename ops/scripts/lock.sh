#!/usr/bin/env bash
# Refresh requirements.lock: every dependency (with the dev extras) pinned, resolved for Python 3.11
# on Linux x86_64. bootstrap.sh installs from it; commit the new file once the suite passes on it.
# uv runs from a throwaway venv, so it is not a dependency of the project.
set -euo pipefail
cd "$(dirname "$0")/../.."
TMP="${TMPDIR:-/tmp}"
TOOLS="$TMP/compass-lock-tools"
[ -x "$TOOLS/bin/uv" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet uv; }
# torch is the CPU build, installed first by bootstrap.sh; pinning its local version keeps the
# resolver from choosing a CUDA build and its nvidia-* packages.
printf 'torch==%s\n' "${COMPASS_TORCH_LOCK:-2.13.0+cpu}" > "$TMP/compass-torch-override.txt"
LINKS=()
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do [ -d "$dir" ] && LINKS+=(--find-links "$dir"); done
"$TOOLS/bin/uv" pip compile pyproject.toml --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 "${LINKS[@]}" \
  --override "$TMP/compass-torch-override.txt" --index-strategy unsafe-best-match \
  --quiet --output-file requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
