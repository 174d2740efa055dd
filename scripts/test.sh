#!/usr/bin/env bash
# The test command: generated-code drift, lint, types, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" scripts/gen_protos.py --check
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy steerguard classifier_service steer_service sidecar devstack
"$PY" -m pytest -q -ra --durations=20 "$@"
