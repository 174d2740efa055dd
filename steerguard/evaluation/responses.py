"""The response probe on held-out (prompt, answer) pairs: ``steerguard eval``'s ``responses`` section.

The pairs are written by the embedded model from held-out prompts only
(:mod:`steerguard.data.answers`, the same recipe as calibration's): its
unsteered answers to harmful prompts (unsafe unless the strict judge sees a
refusal), its refusal-steered answers to them (safe), and its answers to
ordinary benign and XSTest-safe prompts (safe). An answer is read as the
classifier reads it (:mod:`steerguard.responses`) and flagged when one of
its positions reaches the bundle's cut. Reported:

- the AUROC of the answers' highest position scores;
- unsafe answers caught and safe answers flagged, with counts, per kind too;
- the same complied answers placed after held-out ordinary prompts
  (:func:`steerguard.data.answers.transplanted`), caught: an innocent
  request that gets a harmful reply, reported apart from the rest;
- complied and benign answers continued after a held-out follow-up turn
  (:func:`steerguard.data.answers.continued`, :data:`steerguard.data.follow_ups.HELDOUT`):
  the second half of the answer after its first half and a follow-up such
  as "Please carry on.", caught and flagged, reported apart from the rest
  and held to the answers' targets;
- the continued answers again, each follow-up taken as a phrase the
  follow-up rule does not know (:func:`served_scores`): what the rule's
  vocabulary does not decide;
- every pair again after an earlier ordinary exchange (:func:`after_an_exchange`):
  a chat whose last turn is a new question, caught and flagged;
- every answer read in the bundle's response view (``chat`` or ``request``,
  :func:`steerguard.responses.answer_view`), and as many ways as the
  classifier reads it (:func:`steerguard.responses.answer_readings`), as it serves it;
- the detection delay: answer tokens read up to the first flagged position
  of a caught answer. These answers carry no mark of where unsafe text
  starts, so the delay is counted from the answer's first token: an upper
  bound on the delay from the first unsafe sentence;
- tokens released to the client per hold-back: the sidecar judges the
  answer each time it has held back ``H`` characters and releases a window
  only once it is judged safe, so a caught answer leaks the windows before
  the one holding its first flagged position (whole windows; a stream also
  scores the last token at every check, which can only catch earlier).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steerguard.bundle import Bundle
from steerguard.calibration.threshold import auroc
from steerguard.data import follow_ups
from steerguard.data.answers import (
    BENIGN,
    AnswerPair,
    PairPrompts,
    Writing,
    continued,
    transplanted,
    write_pairs,
)
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import HeldOut, subsample
from steerguard.evaluation.scoring import r
from steerguard.evaluation.stats import proportion
from steerguard.manifest import SHORT_TURNS_BOTH
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.passages import ender_ids
from steerguard.responses import AnswerRead, Turns, answer_read, answer_readings, last_turn, position_scores


def held_out_pairs(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> list[AnswerPair]:
    """The model's answers to a seeded sample of held-out prompts (module docstring)."""
    xstest_safe = [e for e in held.xstest if e.label == 0]
    prompts = PairPrompts(
        [e.prompt for e in subsample(held.harmful, cfg.response_harmful, cfg.seed + 7)],
        [e.prompt for e in subsample(held.benign, cfg.response_benign, cfg.seed + 8)],
        [e.prompt for e in subsample(xstest_safe, cfg.response_xstest, cfg.seed + 9)],
    )
    how = Writing(cfg.seed, cfg.response_tokens, cfg.prose_batch_size, cfg.progress)
    return write_pairs(host, bundle, prompts, how)


def response_section(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> dict[str, Any]:
    """The section's figures; ``{"skipped": reason}`` for a bundle without a response probe."""
    if bundle.response is None:
        return {"skipped": "the bundle has no response probe (scripts/fit_response.py adds one)"}
    pairs = held_out_pairs(host, bundle, held, cfg)
    moved = [p for p in transplanted(pairs, cfg.seed + 10) if not p.scored_from]  # as asked, not inside
    later = continued(pairs, follow_ups.HELDOUT, cfg.seed + 11)
    asked = after_an_exchange(pairs, cfg.seed + 12)
    enders, view = ender_ids(host.tokenizer), bundle.response.view
    reads = [answer_read(host, p.conversation(), p.answer, enders, view) for p in pairs]
    scores = position_scores(host, bundle, reads, batch_size=cfg.batch_size)
    apart = served_scores(host, bundle, moved + later + asked, cfg.batch_size) >= bundle.threshold
    innocent, after = apart[: len(moved)], apart[len(moved) : len(moved) + len(later)]
    anew = apart[len(moved) + len(later) :]
    unknown = served_scores(host, bundle, later, cfg.batch_size, unknown_turns=True) >= bundle.threshold
    highest = np.array([max(s) for s in scores])
    labels = np.array([int(p.unsafe) for p in pairs])
    cut = bundle.threshold
    flagged = highest >= cut
    caught = [
        (read, read.positions[next(i for i, v in enumerate(s) if v >= cut)])
        for read, s, hit, y in zip(reads, scores, flagged, labels, strict=True)
        if hit and y == 1
    ]
    delays = [first + 1 for _, first in caught]
    kinds = sorted({p.kind for p in pairs if not p.unsafe})
    return {
        "pairs": {kind: sum(p.kind == kind for p in pairs) for kind in sorted({p.kind for p in pairs})},
        "auroc": r(auroc(labels, highest)) if 0 < labels.sum() < len(labels) else None,
        "unsafe_caught": _rate(flagged[labels == 1]),
        "benign_flagged": _rate(flagged[labels == 0]),
        "flagged_by_kind": {k: _rate(flagged[[p.kind == k for p in pairs]]) for k in kinds},
        "harmful_after_innocent_request_caught": _rate(innocent),
        "after_a_follow_up": {
            "unsafe_caught": _rate(after[[p.unsafe for p in later]]),
            "benign_flagged": _rate(after[[not p.unsafe for p in later]]),
        },
        "after_a_follow_up_the_rule_does_not_know": {
            "unsafe_caught": _rate(unknown[[p.unsafe for p in later]]),
            "benign_flagged": _rate(unknown[[not p.unsafe for p in later]]),
            "read": "each follow-up taken as a phrase the follow-up rule does not know",
        },
        "after_an_earlier_exchange": {
            "unsafe_caught": _rate(anew[[p.unsafe for p in asked]]),
            "benign_flagged": _rate(anew[[not p.unsafe for p in asked]]),
        },
        "detection_delay_tokens": {
            "median": float(np.median(delays)) if delays else None,
            "p90": float(np.percentile(delays, 90)) if delays else None,
            "counted_from": "the answer's first token (an upper bound from the first unsafe sentence)",
        },
        "released_tokens": released_tokens(host, caught, cfg.response_hold_backs),
    }


def served_scores(
    host: ModelHost, bundle: Bundle, pairs: list[AnswerPair], batch_size: int, *, unknown_turns: bool = False
) -> np.ndarray:
    """Each answer's score as the classifier serves it: the lowest of its readings' highest
    (:func:`steerguard.responses.answer_readings`, ``ViewPlan.pick``).

    ``unknown_turns``: every last user turn read as one the follow-up rule
    does not take, i.e. as the request, and, in a bundle whose ``short_turns``
    is ``both``, as a follow-up too: what a follow-up phrased outside the
    rule's vocabulary gets, whatever the phrases' own words.
    """
    info, enders = bundle.response, ender_ids(host.tokenizer)
    if info is None:
        raise ValueError("the bundle has no response probe")

    unknown_ways = (False, True) if info.short_turns == SHORT_TURNS_BOTH else (False,)

    def unknown(conv: Conversation) -> tuple[Turns, ...]:
        return tuple(last_turn(conv, follow_up) for follow_up in unknown_ways)

    convs = [p.conversation() for p in pairs]
    ways = [unknown(c) if unknown_turns else answer_readings(c, info) for c in convs]
    reads = [
        answer_read(host, conv, p.answer, enders, info.view, way)
        for p, conv, each in zip(pairs, convs, ways, strict=True)
        for way in each
    ]
    scores = iter(position_scores(host, bundle, reads, batch_size=batch_size))
    return np.array([min(max(next(scores)) for _ in each) for each in ways])


def after_an_exchange(pairs: list[AnswerPair], seed: int) -> list[AnswerPair]:
    """Every pair again as a chat's second request: after another ordinary prompt and its answer.

    The shape a chat takes when its last turn is a new question rather than
    a follow-up; the earlier exchange is drawn (seeded) from the pairs' own
    ordinary ones, never the pair itself. Labels stay the pair's.
    """
    import random

    rng = random.Random(seed)
    ordinary = [p for p in pairs if p.kind == BENIGN]
    out = []
    for p in pairs:
        others = [o for o in ordinary if o.prompt != p.prompt]
        if others:
            o = rng.choice(others)
            earlier = (("user", o.prompt), ("assistant", o.answer))
            out.append(AnswerPair(p.prompt, p.answer, p.kind, p.prompt, 0, earlier))
    return out


def released_tokens(
    host: ModelHost, caught: list[tuple[AnswerRead, int]], hold_backs: tuple[int, ...]
) -> dict[str, Any]:
    """Per hold-back: tokens of caught unsafe answers that reach the client (module docstring)."""
    ends = [_char_ends(host, read) for read, _ in caught]
    out: dict[str, Any] = {}
    for hold in hold_backs:
        leaked = []
        for token_ends, (_, first) in zip(ends, caught, strict=True):
            released_chars = (math.ceil(token_ends[first] / hold) - 1) * hold
            leaked.append(sum(end <= released_chars for end in token_ends))
        out[str(hold)] = {
            "median": float(np.median(leaked)) if leaked else None,
            "p90": float(np.percentile(leaked, 90)) if leaked else None,
            "none_released": r(sum(n == 0 for n in leaked) / len(leaked)) if leaked else None,
        }
    return out


def _char_ends(host: ModelHost, read: AnswerRead) -> list[int]:
    """Where each answer token ends in the answer's text, in characters."""
    return [len(host.tokenizer.decode(list(read.answer[: i + 1]))) for i in range(len(read.answer))]


def _rate(hits: np.ndarray) -> dict[str, Any]:
    out = proportion([bool(h) for h in hits])
    return {"rate": r(out["k"] / out["n"]) if out["n"] else None, **out}
