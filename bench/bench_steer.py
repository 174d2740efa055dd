"""Steer service benchmarks, ratios measured in one run.

Targets (issue 4):

1. steered (REFUSAL) vs unsteered (NONE) tokens/s at batch 1: >= 0.95x;
2. 8 concurrent requests with mixed modes vs 8 concurrent with the same mode
   (NONE, the cheapest): throughput >= 0.9x;
3. the same 8 mixed requests concurrently vs one at a time: >= 2x;
4. AUTO adds no forward pass: its time to first token <= 1.05x that of NONE.

Requests go through the service core (validation, tokenisation, the engine's
continuous-batching loop, incremental detokenisation) in process; gRPC adds
the same small per-chunk cost to every variant. Every request generates
exactly ``--tokens`` tokens (EOS ignored) so variants do the same work.
Each ratio is the median of ratios of back-to-back pairs (which one runs
first alternates), so drift in a shared machine's load cancels out instead of
landing on one variant. Every ratio is given twice: over wall-clock time (what
a client sees) and over the engine thread's CPU time (the work the engine
did, which a shared machine's load does not swing). Torch runs one intra-op
thread by default: on a loaded 2-core machine two OpenMP threads stall on
each other, and with more threads the engine-CPU column would miss the
workers' time (``--threads 0`` for torch's default).

    python bench/bench_steer.py                    # SmolLM2 + default bundle (random if absent)
    python bench/bench_steer.py --tiny --pairs 3   # quick smoke run on a tiny random Llama
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from steer_service.config import SteerConfig  # noqa: E402
from steer_service.service import GenerateInput, SteerService  # noqa: E402
from steerguard.plan import Mode, SteeringRequest  # noqa: E402

PROMPTS = [
    "How do I bake sourdough bread at home?",
    "Explain how photosynthesis works to a ten year old.",
    "Write a short poem about the sea at night.",
    "What are three tips for a good job interview?",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "How can I improve my sleep?",
    "Give me a recipe for a vegetable curry, with the spices I need.",
    "Why is the sky blue?",
]


def load(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, str]:
    from devstack.models import make_random_bundle, make_tiny_llama
    from steerguard.bundle import DEFAULT_BUNDLE_DIR, Bundle
    from steerguard.model.host import ModelHost

    if args.tiny:
        host = ModelHost.load(make_tiny_llama(tmp / "tiny"), threads=args.threads)
    else:
        host = ModelHost.load(args.model, threads=args.threads)
    bundle_dir = Path(args.bundle) if args.bundle else DEFAULT_BUNDLE_DIR
    if (bundle_dir / "manifest.json").is_file():
        bundle = Bundle.load(bundle_dir)
        if bundle.model.get("sha256") == host.identity.sha256:
            return host, bundle, str(bundle_dir)
    return host, make_random_bundle(host, tmp / "bundle"), "random (no matching bundle)"


def mixed_modes(bundle: Any) -> list[SteeringRequest]:
    cats = bundle.categories or [""]
    modes = [
        SteeringRequest(Mode.NONE),
        SteeringRequest(Mode.REFUSAL),
        SteeringRequest(Mode.CATEGORY, cats[0]) if cats[0] else SteeringRequest(Mode.REFUSAL),
        SteeringRequest(Mode.AUTO),
        SteeringRequest(Mode.SCANS),
    ]
    return [modes[i % len(modes)] for i in range(8)]


Sample = tuple[float, float]  # (wall-clock value, engine-CPU value) of one measurement


def paired(num: Callable[[], Sample], den: Callable[[], Sample], n: int) -> list[tuple[Sample, Sample]]:
    """``n`` (num, den) samples taken back to back, alternating which goes first."""
    out = []
    for i in range(n):
        if i % 2:
            b = den()
            a = num()
        else:
            a = num()
            b = den()
        out.append((a, b))
    return out


class Bench:
    """Each measurement returns its wall-clock value and the same value over engine CPU time.

    Wall clock is what a client sees but swings with a shared machine's load;
    the engine thread's CPU time counts only the work the engine did, so its
    ratios show whether a variant really costs more.
    """

    def __init__(self, service: SteerService, tokens: int) -> None:
        self.service = service
        self.tokens = tokens

    def _measure(self, fn: Callable[[], int]) -> tuple[float, float, int]:
        engine = self.service.engine
        engine.wait_idle(60)
        cpu0, start = engine.stats.busy_cpu_seconds, time.perf_counter()
        n = fn()
        wall = time.perf_counter() - start
        engine.wait_idle(60)
        return wall, engine.stats.busy_cpu_seconds - cpu0, n

    def one(self, prompt: str, steering: SteeringRequest, tokens: int | None = None) -> int:
        """Run one request to its end; returns its completion tokens."""
        handle = self.service.submit(
            GenerateInput(prompt=prompt, max_new_tokens=tokens or self.tokens, steering=steering)
        )
        n = 0
        for chunk in handle:
            n = chunk.completion_tokens or n
        return n

    def tokens_per_second(self, steering: SteeringRequest) -> Sample:
        wall, cpu, n = self._measure(lambda: self.one(PROMPTS[0], steering))
        return n / wall, n / cpu

    def ttft(self, steering: SteeringRequest) -> Sample:
        """Time to the one token of a ``max_new_tokens=1`` request (prefill + first pick)."""
        wall, cpu, _ = self._measure(lambda: self.one(PROMPTS[1], steering, tokens=1))
        return wall, cpu

    def concurrent(self, modes: list[SteeringRequest]) -> Sample:
        """Tokens/s of len(modes) requests sent at once."""

        def run() -> int:
            results: list[int] = [0] * len(modes)
            gate = threading.Barrier(len(modes))

            def call(i: int) -> None:
                gate.wait()
                results[i] = self.one(PROMPTS[i % len(PROMPTS)], modes[i])

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(modes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(results)

        wall, cpu, n = self._measure(run)
        return n / wall, n / cpu

    def sequential(self, modes: list[SteeringRequest]) -> Sample:
        wall, cpu, n = self._measure(
            lambda: sum(self.one(PROMPTS[i % len(PROMPTS)], m) for i, m in enumerate(modes))
        )
        return n / wall, n / cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model directory (default: SmolLM2)")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: the shipped one)")
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama (smoke run)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per request")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs per cheap comparison")
    parser.add_argument("--ttft-pairs", type=int, default=41, help="pairs of one-token requests for TTFT")
    parser.add_argument("--rounds", type=int, default=3, help="pairs for concurrent vs one-at-a-time")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch default; 1 by default: on a shared, loaded machine "
        "multi-threaded kernels stall on descheduled threads and swamp every ratio with noise)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        host, bundle, bundle_name = load(args, Path(tmp))
        config = SteerConfig(max_batch_size=8, max_new_tokens_cap=max(64, args.tokens), ignore_eos=True)
        service = SteerService(host, bundle, config).start()
        try:
            bench = Bench(service, args.tokens)
            mixed = mixed_modes(bundle)
            same = [SteeringRequest(Mode.NONE)] * 8
            verdict = ""
            for chunk in service.submit(
                GenerateInput(prompt=PROMPTS[1], max_new_tokens=1, steering=SteeringRequest(Mode.AUTO))
            ):
                if chunk.applied is not None and chunk.applied.verdict is not None:
                    verdict = "unsafe" if chunk.applied.verdict.unsafe else "safe"
            bench.one(PROMPTS[0], SteeringRequest(Mode.NONE))  # warm-up
            bench.concurrent(same)
            none, refusal, auto = (SteeringRequest(m) for m in (Mode.NONE, Mode.REFUSAL, Mode.AUTO))
            comparisons: list[tuple[str, Callable[[], Sample], Callable[[], Sample], str, float, int]] = [
                (
                    "steered/unsteered tokens/s, batch 1",
                    lambda: bench.tokens_per_second(refusal),
                    lambda: bench.tokens_per_second(none),
                    ">=",
                    0.95,
                    args.pairs,
                ),
                (
                    "AUTO / NONE time to first token",
                    lambda: bench.ttft(auto),
                    lambda: bench.ttft(none),
                    "<=",
                    1.05,
                    args.ttft_pairs,
                ),
                (
                    "8 mixed / 8 same-mode throughput",
                    lambda: bench.concurrent(mixed),
                    lambda: bench.concurrent(same),
                    ">=",
                    0.9,
                    args.pairs,
                ),
                (
                    "8 mixed concurrent / one at a time",
                    lambda: bench.concurrent(mixed),
                    lambda: bench.sequential(mixed),
                    ">=",
                    2.0,
                    args.rounds,
                ),
            ]
            results = []
            for label, num, den, op, target, n in comparisons:
                pairs = paired(num, den, n)
                wall = statistics.median(a[0] / b[0] for a, b in pairs)
                cpu = statistics.median(a[1] / b[1] for a, b in pairs)
                results.append(
                    {
                        "ratio": label,
                        "wall": wall,
                        "engine_cpu": cpu,
                        "target": f"{op} {target}",
                        "wall_pass": wall >= target if op == ">=" else wall <= target,
                        "cpu_pass": cpu >= target if op == ">=" else cpu <= target,
                        "pairs": [[list(a), list(b)] for a, b in pairs],
                    }
                )
                shown = [(round(a[0], 4), round(b[0], 4)) for a, b in pairs]
                print(f"{label}: wall pairs {shown}", file=sys.stderr)
            max_rows = service.engine.stats.max_rows
        finally:
            service.close()

    model = "tiny random Llama" if args.tiny else host.identity.name
    print(
        f"model {model}, bundle {bundle_name}, {args.tokens} tokens/request, "
        f"torch threads {torch.get_num_threads()}, AUTO verdict on the TTFT prompt: {verdict}, "
        f"max rows decoded together: {max_rows}"
    )
    print("ratio (median of interleaved pairs)       wall  engine-CPU  target   wall / CPU")
    for r in results:
        verdicts = "/".join("PASS" if r[k] else "MISS" for k in ("wall_pass", "cpu_pass"))
        print(f"{r['ratio']:40s} {r['wall']:6.3f}  {r['engine_cpu']:6.3f}     {r['target']:8s} {verdicts}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": model, "ratios": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
