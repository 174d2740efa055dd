"""The steer service's vLLM engine vs its in-house engine: tokens/s, side by side in one run.

Issue 29's targets: vLLM-engine tokens/s vs the in-house engine at batch 1
and batch 8, and steered (REFUSAL) vs unsteered within the vLLM engine, at
least 0.95x. Both engines serve the same host and bundle in one process;
runs alternate (NONE, REFUSAL) four times per batch size, fixed-length
generations (48 tokens, EOS ignored), medians reported. Needs the vLLM
virtualenv (``bash scripts/setup_vllm.sh``; docs/vllm.md):

    .venv-vllm/bin/python bench/bench_vllm.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from vllm_steering_check import PROMPTS, run  # noqa: E402

from steer_service.config import SteerConfig  # noqa: E402
from steer_service.service import GenerateInput, SteerService  # noqa: E402
from steerguard.bundle import DEFAULT_BUNDLE_DIR, Bundle  # noqa: E402
from steerguard.model.host import ModelHost  # noqa: E402
from steerguard.plan import Mode, SteeringRequest  # noqa: E402


def tokens_per_s(service: SteerService, rows: int, mode: Mode, tokens: int = 48) -> float:
    """Generated tokens per second with ``rows`` requests at once (fixed length: ignore_eos)."""
    inputs = [
        GenerateInput(prompt=PROMPTS[i % len(PROMPTS)], max_new_tokens=tokens, steering=SteeringRequest(mode))
        for i in range(rows)
    ]
    started = time.perf_counter()
    run(service, inputs)
    return rows * tokens / (time.perf_counter() - started)


def bench(host: ModelHost, bundle: Bundle) -> dict[str, float]:
    """Tokens/s of each engine at batch 1 and 8, and steered (REFUSAL) vs NONE within vLLM."""
    runs: dict[str, list[float]] = {}
    for engine in ("inhouse", "vllm"):
        service = SteerService(host, bundle, SteerConfig(engine=engine, ignore_eos=True)).start()
        try:
            tokens_per_s(service, 2, Mode.NONE, 8)  # warm-up
            for rows in (1, 8):
                for mode in (Mode.NONE, Mode.REFUSAL) * 4:  # alternating
                    runs.setdefault(f"{engine} batch {rows} {mode.value}", []).append(
                        tokens_per_s(service, rows, mode)
                    )
        finally:
            service.close()
    rates = {key: statistics.median(values) for key, values in runs.items()}
    for key, rate in rates.items():
        print(f"{key:28} {rate:7.1f} tokens/s")
    for rows in (1, 8):
        vllm, ours = rates[f"vllm batch {rows} none"], rates[f"inhouse batch {rows} none"]
        steered = rates[f"vllm batch {rows} refusal"] / vllm
        print(
            f"batch {rows}: vLLM {vllm / ours:.2f}x the in-house engine; "
            f"steered/unsteered in vLLM {steered:.2f} (target >= 0.95)"
        )
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the rates as JSON here")
    args = parser.parse_args()
    rates = bench(ModelHost.load(None, dtype="float32"), Bundle.load(DEFAULT_BUNDLE_DIR))
    if args.out:
        Path(args.out).write_text(json.dumps(rates, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
