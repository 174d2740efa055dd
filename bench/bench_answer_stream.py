"""Cost of judging a streamed answer: 2,000 tokens against 200, side by side in one run.

The sidecar judges a streamed answer each time it has held back a window of
``window_chars`` characters (the policy's default hold-back). Two ways of
judging are measured on the same fresh answers (interleaved rounds, new words
each time so no cache answers):

- ``stream``: ``ClassifyStream``, what the sidecar uses (the classifier keeps
  the answer's keys and values; each check reads only its new tokens);
- ``resend``: ``Classify`` with the whole answer so far at every check (the
  windows' verdicts cached, so only the last window is read again);
- ``stream_after_a_short_turn``: ``stream`` for the same answer continued
  after "Hmm, interesting. More?", a turn the follow-up rule does not know:
  with a bundle whose ``short_turns`` is ``both`` it is read two ways, two
  caches (``short_turn_readings``; ``short_turn_cost_vs_stream``, its time
  over the plain stream's).

Reported per way: median wall time of all checks of one answer at each length,
the ratio 2,000 / 200 (target: at most 12 for the stream), and the first
check's time, which is what the check adds to the client's time to first
token (the sidecar releases nothing before the first window is judged). The
core is called in-process: a gRPC round trip adds about a millisecond per check.

    python bench/bench_answer_stream.py [--rounds 5] [--tiny] [--dtype auto]
        [--out reports/bench/answer_stream.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from classifier_setup import add_dtype_flag, load  # noqa: E402  (bench/, on the path when a benchmark runs)
from report import save  # noqa: E402

from classifier_service.cache import MemoryCache  # noqa: E402
from classifier_service.config import CoreConfig  # noqa: E402
from classifier_service.core import ClassifierCore  # noqa: E402
from sidecar.policy import ResponseCheck  # noqa: E402
from steerguard.logs import configure_logging  # noqa: E402
from steerguard.model.chat import Conversation, normalise_request  # noqa: E402
from steerguard.model.host import AUTO_DTYPE, ModelHost  # noqa: E402
from steerguard.responses import answer_readings  # noqa: E402

_PROSE = """
the answer explains how the committee reviewed annual budgets for schools, parks, roads and
libraries across the region. it recommends steady funding; careful audits come every spring!
"""
WORDS = tuple(_PROSE.split())
LENGTHS = {"200": 200, "2000": 2000}
TARGET_RATIO = 12.0


def answer_text(host: ModelHost, tokens: int, rng: random.Random) -> str:
    """Ordinary prose of ``tokens`` tokens, cut to exactly that many (fresh words each call)."""
    words: list[str] = []
    while len(host.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(32))
    ids = host.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:tokens]
    return str(host.tokenizer.decode(ids))


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def judge_stream(core: ClassifierCore, conv: Conversation, pieces: list[str]) -> float:
    """All checks of one answer over an answer stream; the first check's seconds."""
    started = time.perf_counter()
    first = 0.0
    with core.answer_stream(conv) as judge:
        for piece in pieces:
            judge(piece)
            first = first or time.perf_counter() - started
    return first


def judge_resend(core: ClassifierCore, conv: Conversation, pieces: list[str]) -> float:
    """All checks of one answer, each sending the whole answer so far; the first check's seconds."""
    started = time.perf_counter()
    first = 0.0
    for i in range(len(pieces)):
        core.classify([conv], answers=["".join(pieces[: i + 1])])
        first = first or time.perf_counter() - started
    return first


# A follow-up outside the follow-up rule's vocabulary: with a bundle whose ``short_turns`` is
# ``both`` the answer after it is read two ways (steerguard.responses.answer_readings).
SHORT_TURN = "Hmm, interesting. More?"


def after_a_short_turn(conv: Conversation) -> Conversation:
    """``conv``'s request, a first answer, then :data:`SHORT_TURN`: the answer continues it."""
    request = conv.last_user_text
    return normalise_request(
        messages=[
            {"role": "user", "content": request},
            {"role": "assistant", "content": "Here is the first part of the report."},
            {"role": "user", "content": SHORT_TURN},
        ]
    )


def judge_stream_after_a_short_turn(core: ClassifierCore, conv: Conversation, pieces: list[str]) -> float:
    return judge_stream(core, after_a_short_turn(conv), pieces)


WAYS: dict[str, Callable[[ClassifierCore, Conversation, list[str]], float]] = {
    "stream": judge_stream,
    "resend": judge_resend,
    "stream_after_a_short_turn": judge_stream_after_a_short_turn,
}


def measure(rounds: int, tiny: bool, window_chars: int, dtype: str = AUTO_DTYPE) -> dict[str, object]:
    host, bundle = load(tiny, dtype, response=True)
    core = ClassifierCore(host, bundle, MemoryCache(max_entries=10_000, ttl_seconds=600), CoreConfig())
    core.warm_up()
    rng = random.Random(0)
    for run in WAYS.values():  # untimed: first-call costs (imports, allocations) out of the ratios
        run(core, normalise_request("Warm up."), _pieces(answer_text(host, 60, rng), window_chars))
    total: dict[str, dict[str, list[float]]] = {w: {k: [] for k in LENGTHS} for w in WAYS}
    first: dict[str, list[float]] = {w: [] for w in WAYS}
    checks: dict[str, int] = {}
    for _ in range(rounds):
        for name, tokens in LENGTHS.items():
            for way, run in WAYS.items():
                conv = normalise_request(f"Tell me about the regional budget ({rng.random():.6f}).")
                pieces = _pieces(answer_text(host, tokens, rng), window_chars)
                checks[name] = len(pieces)
                started = time.perf_counter()
                first[way].append(run(core, conv, pieces))
                total[way][name].append(time.perf_counter() - started)
    core.close()
    readings = len(answer_readings(after_a_short_turn(normalise_request("Hi.")), bundle.response))
    return {
        "dtype": str(host.model.dtype).removeprefix("torch."),
        **report(total, first, checks, window_chars),
        "short_turn_readings": readings,
    }


def report(
    total: dict[str, dict[str, list[float]]],
    first: dict[str, list[float]],
    checks: dict[str, int],
    window_chars: int,
) -> dict[str, object]:
    out: dict[str, object] = {"window_chars": window_chars, "checks": checks}
    for way, times in total.items():
        p50 = {k: statistics.median(v) for k, v in times.items()}
        out[way] = {
            "p50_s": {k: round(v, 4) for k, v in p50.items()},
            "ratio_2000_vs_200": round(p50["2000"] / p50["200"], 3),
            "first_check_ms_p50": round(1000 * statistics.median(first[way]), 2),
        }
    stream = out["stream"]
    assert isinstance(stream, dict)
    both = {k: statistics.median(v) for k, v in total["stream_after_a_short_turn"].items()}
    alone = {k: statistics.median(v) for k, v in total["stream"].items()}
    out["short_turn_cost_vs_stream"] = {k: round(both[k] / alone[k], 3) for k in LENGTHS}
    ratio = float(stream["ratio_2000_vs_200"])
    out["target"] = {"ratio_max": TARGET_RATIO, "pass": ratio <= TARGET_RATIO}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    add_dtype_flag(parser)
    parser.add_argument("--window-chars", type=int, default=ResponseCheck.window_chars)
    parser.add_argument("--out", default="reports/bench/answer_stream.json")
    ns = parser.parse_args()
    configure_logging("json", "warning")
    result = measure(ns.rounds, ns.tiny, ns.window_chars, ns.dtype)
    save(result, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
