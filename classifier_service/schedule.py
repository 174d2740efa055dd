"""How the batcher fills a step: packed prompts, or one prompt a step, chosen at start-up.

Two ways to run a queue of short prompts on a CPU:

- **packed**: up to ``max_batch_size`` prompts a step in PyTorch; a prompt
  alone in its step takes the compiled trunk (classifier_service.accelerated).
- **single**: one prompt a step, every one through the compiled trunk.

Which serves better depends on the CPU and the engine. Measured on an AMX
Xeon (docs/benchmarks.md): with ONNX Runtime's int8 trunk beside PyTorch
float32 (what a CPU without native bf16 serves), a lone prompt cost
1.2-1.4x a packed prompt's share of its step, yet one prompt a step served
nearly as many calls a second (40-41 against 42-45: a packed call pays more
of the serving path's own time) and kept admitted calls' p99 at 0.029 s at
0.8x the sustainable load and 0.42 s at 2x, against 0.53 and 0.80 s packed
(on a real CPU without bf16, one prompt a step sustained 36-38 calls a
second against 32-36). With OpenVINO bf16
beside PyTorch bf16, a lone prompt cost 2.3-2.9x, and packed steps served
71-77 calls a second against 53-61. So ``auto`` times both paths on this
machine before serving and takes one prompt a step where the lone pass
costs at most ``CoreConfig.single_max_ratio`` times the packed share.

The two shed by different units: packed steps by a fraction of a full
512-token step (``max_queue_delay_steps``), one prompt a step by a count of
one-prompt steps (``single_queue_delay_steps``: the queue drains one prompt
at a time, so that is what a caller's wait is made of).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Ordinary requests of 20-30 tokens (the length of a typical chat turn's miss), timed both ways.
_SUBJECTS = ("river notes", "grain ledger", "weather log", "boat repairs", "market stall", "town archive")
_ASKS = (
    "How should I keep the {} of my small trading company tidy, so that new staff can read it quickly?",
    "What is a simple weekly routine for checking the {} before the season starts, step by step?",
    "Could you suggest three ways to explain the {} to a colleague who has never seen one?",
)
LONE_RUNS = 8
PACKED_RUNS = 3


def sample_prompts(n: int) -> list[str]:
    """``n`` distinct ordinary prompts for the timing (the same on every start)."""
    return [
        _ASKS[i % len(_ASKS)].format(_SUBJECTS[(i // len(_ASKS)) % len(_SUBJECTS)]) + f" ({i})"
        for i in range(n)
    ]


@dataclass(frozen=True)
class Timing:
    """Seconds for one prompt alone, and a packed step's time divided by its prompts."""

    lone_s: float
    packed_s_per_prompt: float

    @property
    def ratio(self) -> float:
        return self.lone_s / self.packed_s_per_prompt


def time_paths(run: Callable[[list[list[int]]], object], rows: Sequence[list[int]]) -> Timing:
    """Median time of ``run`` on one row (``LONE_RUNS`` times) and on all ``rows`` at once."""

    def median(batch: Callable[[int], list[list[int]]], runs: int) -> float:
        took = []
        for i in range(runs):
            started = time.perf_counter()
            run(batch(i))
            took.append(time.perf_counter() - started)
        return statistics.median(took)

    lone = median(lambda i: [rows[i % len(rows)]], LONE_RUNS)
    packed = median(lambda i: list(rows), PACKED_RUNS) / len(rows)
    return Timing(lone, packed)


def choose(schedule: str, timing: Timing | None, max_ratio: float) -> str:
    """``packed`` or ``single``: the one asked for, or for ``auto`` by ``timing`` (none: packed)."""
    if schedule != "auto":
        return schedule
    if timing is None:
        return "packed"
    return "single" if timing.ratio <= max_ratio else "packed"
