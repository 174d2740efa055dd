"""Shedding under sustained overload holds admitted calls to the waits of normal load."""

from __future__ import annotations

import time

import pytest

from classifier_service import normal_wait
from classifier_service.normal_wait import FLOOR, HOLD, MIN_SEEN, NormalWait
from steerguard.errors import Overloaded
from tests.test_classifier_batcher import Recorder, held_batcher

LIMIT = 0.1  # seconds: the fixed limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def learnt(margin: float = 1.25, calls: int = 300, top: float = 0.02) -> tuple[NormalWait, Clock]:
    """``calls`` admitted 10 ms apart with waits spread over 0..``top`` s, all learnt since."""
    clock = Clock()
    normal = NormalWait(margin, clock)
    for i in range(calls):
        clock.now += 0.01
        normal.admitted(top * (i % 100) / 100, LIMIT)
    clock.now += HOLD * LIMIT + 0.01
    normal.admitted(0.0, LIMIT)  # the last ones pass into what is learnt
    return normal, clock


def test_the_fixed_limit_alone_until_a_call_is_shed_then_the_normal_p99_with_a_margin() -> None:
    normal, clock = learnt()
    assert normal.allowed() == 1.0, "at normal load the fixed limit alone"
    normal.refused(LIMIT)
    assert normal.allowed() == pytest.approx(1.25 * 0.0198 / LIMIT)  # p99 of the waits: 19.8 ms
    normal.admitted(0.09, LIMIT)  # overloaded: not a normal wait
    clock.now += HOLD * LIMIT - 0.01
    assert normal.allowed() < 0.3
    normal.refused(LIMIT)  # shed again: the hold starts over
    clock.now += HOLD * LIMIT - 0.01
    assert normal.allowed() < 0.3
    clock.now += 0.02
    assert normal.allowed() == 1.0, "nobody shed for the hold: normal load again"


def test_the_queue_that_built_up_to_a_refusal_is_not_learnt() -> None:
    normal, clock = learnt()
    for _ in range(50):  # a queue growing towards the limit, then a call shed
        clock.now += 0.001
        normal.admitted(0.09, LIMIT)
    normal.refused(LIMIT)
    assert normal.allowed() == pytest.approx(1.25 * 0.0198 / LIMIT)
    clock.now += HOLD * LIMIT + 0.01
    for _ in range(50):  # long waits with nobody shed after them: normal after all
        clock.now += 0.001
        normal.admitted(0.06, LIMIT)
    clock.now += HOLD * LIMIT + 0.01
    normal.admitted(0.0, LIMIT)
    normal.refused(LIMIT)
    assert normal.allowed() == pytest.approx(1.25 * 0.06 / LIMIT)


def test_too_few_waits_seen_or_no_margin_keep_the_fixed_limit_and_the_share_has_bounds() -> None:
    few, _ = learnt(calls=MIN_SEEN - 2)
    few.refused(LIMIT)
    assert few.allowed() == 1.0
    off, _ = learnt(margin=0.0)
    off.refused(LIMIT)
    assert off.allowed() == 1.0
    idle, _ = learnt(top=0.0)
    idle.refused(LIMIT)
    assert idle.allowed() == FLOOR, "calls that never waited still let the next step's calls in"
    slow, _ = learnt(top=0.2)
    slow.refused(LIMIT)
    assert slow.allowed() == 1.0, "never beyond the fixed limit"
    with pytest.raises(ValueError, match="must not be negative"):
        NormalWait(-1.0)


def test_a_batcher_holds_calls_to_normal_waits_once_it_sheds_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """One job a step of 10 tokens (~0.05 s), a limit of 4 such steps. At normal load calls never
    waited, so once one is shed, a call with a step of wait is shed too, until the hold passes."""
    monkeypatch.setattr(normal_wait, "MIN_SEEN", 20)
    rec = Recorder()
    b = held_batcher(
        rec,
        0.05,
        10,
        passes=3,
        max_batch_size=1,
        max_step_tokens=512,
        max_queue_delay_jobs=4.0,
        overload_wait_margin=1.25,
    )
    try:
        time.sleep(0.06)  # the held step is past its estimate: nothing left of it
        for _ in range(30):
            b.admit(10)  # normal load: no wait
        time.sleep(HOLD * 0.2 + 0.1)
        b.admit(10)  # and they are learnt
        for i in range(5):
            b.submit(10 + i, cost=10)  # ~0.25 s ahead: over the fixed ~0.2 s
        b.admit(2)  # 5 flows x 2 tokens: ~0.05 s, under the fixed limit
        with pytest.raises(Overloaded, match=r"\(limit 0\.\d+ s\)$"):
            b.admit(10)
        with pytest.raises(Overloaded, match="the normal wait while overloaded"):
            b.admit(2)  # the same ~0.05 s: now over the normal wait (a fifth of the limit)
        b.admit(1)  # ~0.025 s: under it
        time.sleep(HOLD * 0.2 + 0.1)
        b.admit(2)  # nobody shed for the hold: the fixed limit again
    finally:
        rec.gate.set()
        b.close()
