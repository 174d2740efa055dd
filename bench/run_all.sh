#!/usr/bin/env bash
# Run every benchmark in turn on the embedded defaults and print their ratios.
# Each benchmark measures its own ratios side by side in one run; JSON results
# land in reports/bench/. Run on an otherwise idle machine: the ratios are
# robust to steady load, wall-clock numbers are not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-reports/bench}
mkdir -p "$OUT"
"$PY" bench/bench_classifier.py --out "$OUT/classifier.json"
"$PY" bench/bench_steer.py --out "$OUT/steer.json"
"$PY" bench/bench_generation.py --out "$OUT/generation.json"
"$PY" bench/bench_sidecar.py --services real --out "$OUT/sidecar.json"
"$PY" bench/bench_overhead.py --out "$OUT/overhead.json"
"$PY" bench/bench_length.py --out "$OUT/length.json"
"$PY" bench/bench_length.py --floor 0 --out "$OUT/length_every_window.json"
"$PY" bench/bench_length.py --dtype float32 --side-by-side --out "$OUT/length_float32.json"
"$PY" bench/bench_answer_stream.py --out "$OUT/answer_stream.json"
"$PY" bench/bench_overload.py --out "$OUT/overload.json"
"$PY" bench/bench_overlap.py --out "$OUT/overlap.json"
"$PY" bench/bench_onnx.py --out "$OUT/onnx.json"
"$PY" bench/bench_memory.py --out "$OUT/memory.json"
"$PY" bench/bench_startup.py --out "$OUT/startup.json"
# The vLLM engine runs in its own virtualenv (scripts/setup_vllm.sh); skipped without it.
if [ -x .venv-vllm/bin/python ]; then
  .venv-vllm/bin/python bench/bench_vllm.py --out "$OUT/vllm.json"
else
  echo "bench_vllm.py skipped: no .venv-vllm (bash scripts/setup_vllm.sh)"
fi
echo "results: $OUT/"
