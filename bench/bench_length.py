"""Cost of length: classifying a 4k-token prompt against a 512-token one, side by side in one run.

A prompt longer than the model's window is judged in views (steerguard.views):
with the default bundle, its passages read at every segment end by the
passage probe, up to the passage layer (steerguard.passages). Reported: median wall time of a cache-miss
classification at each length (interleaved rounds, fresh text each time so
the verdict cache never answers), the ratio, and the views and passages each
length took. Target: 4k costs at most 5x 512.

With a passage gate in the bundle, a text's candidates are read again up to
the probe layer (steerguard.passages): the last paragraph always, a window's
top segment end when it reaches the candidate floor. Ordinary prose seldom
does; ``--floor 0`` reads every window's top, the most a text can cost.

``--side-by-side`` also times a core with its passages in PyTorch
(``--no-compiled-passages``) on the same texts, interleaved; with ``--dtype
float32`` that is what a CPU without native bf16 serves.

    python bench/bench_length.py [--rounds 5] [--tiny] [--floor F] [--dtype auto]
        [--side-by-side] [--out reports/bench/length.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from classifier_setup import add_dtype_flag, load  # noqa: E402  (bench/, on the path when a benchmark runs)
from report import save  # noqa: E402

from classifier_service.config import CoreConfig  # noqa: E402
from classifier_service.core import ClassifierCore  # noqa: E402
from steerguard.bundle import Bundle  # noqa: E402
from steerguard.logs import configure_logging  # noqa: E402
from steerguard.model.chat import normalise_request  # noqa: E402
from steerguard.model.host import AUTO_DTYPE, ModelHost  # noqa: E402

_PROSE = """
the report describes how the committee reviewed annual budgets for schools parks roads and
libraries across the region and recommends steady funding with careful audits every spring
"""
WORDS = tuple(_PROSE.split())
LENGTHS = {"512": 512, "4096": 4096}


def document(host: ModelHost, tokens: int, rng: random.Random) -> str:
    """Ordinary prose of about ``tokens`` tokens (fresh words each call: never a cache hit)."""
    words: list[str] = []
    while len(host.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(64))
    return " ".join(words)


def with_floor(bundle: Bundle, floor: float) -> Bundle:
    """``bundle`` with its passage gate's candidate floor at ``floor`` (saved: a served bundle has an id)."""
    info = bundle.passage
    if info is None or info.gate_cut is None:
        raise SystemExit("--floor needs a bundle with a passage gate")
    folder = Path(tempfile.mkdtemp())
    Bundle(
        replace(bundle.manifest, passage=replace(info, candidate_floor=floor), bundle_id=""), bundle.tensors
    ).save(folder)
    return Bundle.load(folder)


def timed_rounds(
    cores: dict[str, ClassifierCore], host: ModelHost, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Per core, per length: the wall time of each round's cache miss (cores and lengths interleaved)."""
    rng = random.Random(0)
    times = {name: {k: [] for k in LENGTHS} for name in cores}
    for _ in range(rounds):
        for length, tokens in LENGTHS.items():
            conv = normalise_request(document(host, tokens, rng))
            for name, core in cores.items():
                started = time.perf_counter()
                core.classify([conv])
                times[name][length].append(time.perf_counter() - started)
    return times


def plan_size(core: ClassifierCore, text: str) -> dict[str, int]:
    """How many views and passages ``core`` reads for ``text``."""
    plan = core.windows.plan(normalise_request(text))
    return {"views": len(plan.read), "passages": len(plan.passages)}


def summary(times: dict[str, list[float]]) -> dict[str, object]:
    """Medians, ranges and the ratio of one core's times."""
    p50 = {k: statistics.median(v) for k, v in times.items()}
    ratio = p50["4096"] / p50["512"]
    # Each round's own ratio: its two lengths ran back to back, so a slow spell of the machine
    # moves both; their spread says how far one run's ratio of medians can be trusted.
    per_round = [b / a for a, b in zip(times["512"], times["4096"], strict=True)]
    return {
        "p50_s": {k: round(v, 4) for k, v in p50.items()},
        "range_s": {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()},
        "ratio_4096_vs_512": round(ratio, 3),
        "round_ratios": [round(x, 3) for x in per_round],
    }


def measure(
    rounds: int, tiny: bool, floor: float | None = None, dtype: str = AUTO_DTYPE, side_by_side: bool = False
) -> dict[str, object]:
    host, bundle = load(tiny, dtype, passage_tokens=128)
    if floor is not None:
        bundle = with_floor(bundle, floor)
    cores = {"default": ClassifierCore(host, bundle, None, CoreConfig())}
    if side_by_side:  # the same text read with the passages in PyTorch (--no-compiled-passages)
        cores["pytorch_passages"] = ClassifierCore(host, bundle, None, CoreConfig(compiled_passages=False))
    for core in cores.values():
        core.warm_up()
    views = {k: plan_size(cores["default"], document(host, t, random.Random(0))) for k, t in LENGTHS.items()}
    times = timed_rounds(cores, host, rounds)
    result = {name: summary(t) for name, t in times.items()}
    for core in cores.values():
        core.close()
    ratio = result["default"]["ratio_4096_vs_512"]
    return {
        **result["default"],
        "views": views,
        "passages_engine": cores["default"].passage_engine,
        "side_by_side": {k: v for k, v in result.items() if k != "default"},
        "candidate_floor": bundle.passage.candidate_floor if bundle.passage else None,
        "dtype": str(host.model.dtype).removeprefix("torch."),
        "target": {"ratio_max": 5.0, "pass": ratio <= 5.0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    add_dtype_flag(parser)
    parser.add_argument("--floor", type=float, default=None, help="the passage gate's candidate floor")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="also time a core with its passages in PyTorch, interleaved",
    )
    parser.add_argument("--out", default="reports/bench/length.json")
    ns = parser.parse_args()
    configure_logging("json", "warning")
    result = measure(ns.rounds, ns.tiny, ns.floor, ns.dtype, ns.side_by_side)
    save(result, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
