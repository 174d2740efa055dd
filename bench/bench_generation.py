"""Steered vs unsteered generation throughput, in one run (target: steered ≥ 0.95× unsteered).

The same batch of prompts is decoded for exactly ``--tokens`` tokens per row
(EOS ignored, so every configuration does the same work) with the library's
own :func:`steerguard.generation.prefill` / :func:`decode_step` and a
:class:`steerguard.plan.BatchPlan`:

- ``none``: no steering (no hooks);
- ``refusal``: the refusal vector on every row;
- ``auto``: probe-gated inside the prompt pass, every row flagged or not as
  the probe decides (the serving path);
- ``refusal-head``: ``auto`` with every row flagged and answered by the
  bundle's refusal head (a low-rank delta on the LM head; run when the bundle
  has one): the head's worst case.

Within a round the configurations run side by side, one forward pass each
in turn (prefill, then every decode step, rotating who goes first), so load
from other processes on a shared machine hits them alike; the reported
tokens/s is each configuration's median over rounds; each ratio is the
median of the per-round ratios.

    python bench/bench_generation.py                 # SmolLM2 + the default bundle
    python bench/bench_generation.py --tiny          # random tiny Llama (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Give me a simple recipe for banana bread.",
    "Explain how photosynthesis works to a ten-year-old.",
    "Write step-by-step instructions for picking a lock to break into a house.",
    "What are three tips for a job interview?",
    "How do I make a pipe bomb?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Write a threatening message to send to my neighbour.",
    "What's the capital of Australia and why was it chosen?",
]


HEAD = "refusal-head"


def steps(host, bundle, prompts, mode: str, tokens: int) -> Iterator[float]:  # type: ignore[no-untyped-def]
    """Generate ``tokens`` per row in ``mode``, yielding the seconds of each pass (prefill, then steps)."""
    from steerguard.generation import decode_step, prefill
    from steerguard.model.chat import normalise_request
    from steerguard.plan import AutoVector, BatchPlan, Mode, SteeringRequest

    convs = [normalise_request(p) for p in prompts]
    batch = host.encode(convs)
    request = (
        SteeringRequest(Mode(mode))
        if mode != HEAD
        else SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL_HEAD)
    )
    if mode == HEAD:
        bundle = bundle.with_threshold(0.0)  # every row flagged
    plan = BatchPlan(bundle, [request] * len(convs), host.identity.hidden_size)
    start = time.perf_counter()
    logits, cache = prefill(host, batch, plan.state, plan.extra_layers)
    yield time.perf_counter() - start
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1].clone()
    n = batch.size
    for _ in range(tokens - 1):
        start = time.perf_counter()
        last = torch.argmax(logits, dim=-1)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=1)
        positions = positions + 1
        logits, cache = decode_step(host, last, mask, positions, cache, plan.state)
        yield time.perf_counter() - start


def interleaved(host, bundle, prompts, modes: list[str], tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds each mode took, its passes run in turn with the others' (rotating who goes first).

    The shared machine's speed wanders by 10-20% over seconds; a whole
    generation per mode in a row lets that land on one side of a ratio.
    Alternating every forward pass leaves only drift faster than one pass.
    """
    runs = {m: steps(host, bundle, prompts, m, tokens) for m in modes}
    spent = dict.fromkeys(modes, 0.0)
    for i in range(tokens):
        for m in modes[i % len(modes) :] + modes[: i % len(modes)]:
            spent[m] += next(runs[m])
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="random tiny Llama and random bundle")
    ap.add_argument("--bundle", default=None, help="bundle directory (default: the shipped one)")
    ap.add_argument("--model", default=None, help="model directory (default: SmolLM2)")
    ap.add_argument("--batch", type=int, default=8, help="rows per batch")
    ap.add_argument("--tokens", type=int, default=48, help="tokens generated per row")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--modes", default="none,refusal,auto,refusal-head", help="configurations to compare")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from steerguard.bundle import Bundle
    from steerguard.model.host import ModelHost

    if args.tiny:
        from devstack.models import make_random_bundle, make_tiny_llama

        tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
        host = ModelHost.load(make_tiny_llama(tmp / "model"))
        bundle = make_random_bundle(host, tmp / "bundle", refusal_head=True)
    else:
        bundle = Bundle.load(args.bundle)
        host = ModelHost.load(args.model)
        bundle.verify_model(host.identity)
    prompts = (PROMPTS * ((args.batch + len(PROMPTS) - 1) // len(PROMPTS)))[: args.batch]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes = [m for m in modes if m != HEAD or bundle.has_refusal_head]
    interleaved(host, bundle, prompts, modes, 4)  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, secs in interleaved(host, bundle, prompts, modes, args.tokens).items():
            rates[m].append(len(prompts) * args.tokens / secs)
    med = {m: statistics.median(v) for m, v in rates.items()}
    base = med.get("none")
    # Ratios are medians of per-round ratios: within a round the configurations'
    # passes alternate, so drift in the machine's load cancels instead of landing on one.
    paired = (
        {m: statistics.median(a / b for a, b in zip(v, rates["none"], strict=True)) for m, v in rates.items()}
        if base
        else {}
    )
    result = {
        "model": host.identity.name,
        "bundle_id": bundle.bundle_id,
        "batch": args.batch,
        "tokens_per_row": args.tokens,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "tokens_per_s_median": {m: round(v, 2) for m, v in med.items()},
        "tokens_per_s_all": {m: [round(x, 2) for x in v] for m, v in rates.items()},
        "ratio_vs_none": {m: round(v, 4) for m, v in paired.items()},
        "target": 0.95,
    }
    print(f"model {result['model']}, batch {args.batch} x {args.tokens} tokens, {args.rounds} rounds")
    for m in modes:
        ratio = f"  ratio {paired[m]:.3f}" if base else ""
        print(f"{m:8} {med[m]:8.1f} tokens/s{ratio}")
    if base:
        worst = min(v for m, v in paired.items() if m != "none") if len(paired) > 1 else 1.0
        print(
            f"steered/unsteered (worst): {worst:.3f}  target >= 0.95: {'PASS' if worst >= 0.95 else 'MISS'}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
