#!/usr/bin/env bash
# The README's run command: install everything, then run the main job on the
# embedded defaults (SmolLM2-135M-Instruct and the shipped bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m devstack up --smoke "$@"
