"""The micro-batcher on its own: grouping, bounds, cancellation, errors, overload, drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from classifier_service.batcher import Limits, MicroBatcher
from steerguard.errors import NotReady, Overloaded


class Recorder:
    """run_batch that records batch sizes and can be held to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(list(items))
        return [x * 10 for x in items]


def test_concurrent_jobs_share_a_batch_bounded_by_size() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=4, max_wait_seconds=0.05)
    first = b.submit(0)
    assert rec.entered.wait(2)  # worker busy with [0]: the next 9 queue up
    rest = [b.submit(i) for i in range(1, 10)]
    rec.gate.set()
    assert [f.result(2) for f in [first, *rest]] == [i * 10 for i in range(10)]
    b.close()
    assert [len(x) for x in rec.batches] == [1, 4, 4, 1]


def test_a_lone_job_waits_at_most_max_wait() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=8, max_wait_seconds=0.05)
    started = time.perf_counter()
    assert b.submit(1).result(2) == 10
    assert time.perf_counter() - started < 0.5
    b.close()


def test_cancelled_jobs_never_run() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=8, max_wait_seconds=0.0)
    b.submit(0)
    assert rec.entered.wait(2)
    gone, kept = b.submit(1), b.submit(2)
    assert gone.cancel()
    rec.gate.set()
    assert kept.result(2) == 20
    b.close()
    assert rec.batches == [[0], [2]]


def test_errors_reach_every_caller_and_the_worker_survives() -> None:
    calls = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4, max_wait_seconds=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        b.submit(1).result(2)
    assert b.submit(2).result(2) == 2
    b.close()


def test_full_queue_is_overloaded_and_close_drains() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=1, max_wait_seconds=0.0, max_queue=2)
    running = b.submit(0)
    assert rec.entered.wait(2)
    queued: list[Future[int]] = [b.submit(1), b.submit(2)]
    with pytest.raises(Overloaded, match="queue is full"):
        b.submit(3)
    rec.gate.set()
    b.close()
    assert [f.result(0) for f in [running, *queued]] == [0, 10, 20]
    with pytest.raises(NotReady):
        b.submit(4)


def test_after_batch_sees_results_after_futures_resolve() -> None:
    seen: list[tuple[list[int], list[int]]] = []
    b: MicroBatcher[int, int] = MicroBatcher(
        lambda xs: [x + 1 for x in xs],
        max_batch_size=4,
        max_wait_seconds=0.0,
        after_batch=lambda p, r: seen.append((list(p), list(r))),
    )
    assert b.submit(1).result(2) == 2
    b.close()
    assert seen == [([1], [2])]


def test_a_lone_client_never_waits_for_a_batch() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch_size=16, max_wait_seconds=2.0)
    started = time.perf_counter()
    for i in range(5):
        assert b.submit(i).result(5) == i
    assert time.perf_counter() - started < 1.0  # no 2 s wait: nobody else was expected
    b.close()


def test_returning_clients_are_waited_for() -> None:
    """After a batch of 3, the next batch waits (up to max_wait) for 3 jobs, not just the first."""
    rec = Recorder()
    rec.gate.clear()

    def slow(xs: list[int]) -> Sequence[int]:
        time.sleep(0.15)  # a pass worth waiting for: the budget is min(0.3 s, 1.0 x 0.15 s)
        return rec(xs)

    b: MicroBatcher[int, int] = MicroBatcher(slow, max_batch_size=8, max_wait_seconds=0.3, wait_fraction=1.0)
    b.submit(0)
    assert rec.entered.wait(2)
    first = [b.submit(i) for i in (1, 2, 3)]
    rec.gate.set()
    assert [f.result(2) for f in first] == [10, 20, 30]  # ran as one batch of 3

    def staggered() -> list[Future[int]]:
        out = []
        for i in (4, 5, 6):
            out.append(b.submit(i))
            time.sleep(0.03)
        return out

    again = staggered()
    assert [f.result(3) for f in again] == [40, 50, 60]
    b.close()
    assert rec.batches == [[0], [1, 2, 3], [4, 5, 6]]


def test_the_wait_is_a_share_of_the_last_forward_pass() -> None:
    """A fast forward pass is not held up by the full max_wait for a client that never returns."""

    def fast(xs: list[int]) -> Sequence[int]:
        time.sleep(0.02)
        return xs

    b: MicroBatcher[int, int] = MicroBatcher(fast, max_batch_size=8, max_wait_seconds=2.0, wait_fraction=0.1)
    assert b.wait_budget() == 2.0  # nothing measured yet: the configured bound
    futures = [b.submit(i) for i in range(4)]
    assert [f.result(5) for f in futures] == [0, 1, 2, 3]
    assert 0.002 <= b.wait_budget() < 0.05  # a tenth of a ~20 ms pass
    started = time.perf_counter()
    assert b.submit(9).result(5) == 9  # expects ~4 jobs that never come
    assert time.perf_counter() - started < 0.5  # not the 2 s max_wait
    b.close()


def test_wait_fraction_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="wait_fraction"):
        MicroBatcher(lambda xs: xs, max_batch_size=2, max_wait_seconds=0.01, wait_fraction=-1)


# -- fairness, token budget, chunks, admission --------------------------------------------


def test_flows_take_turns_so_a_big_call_cannot_starve_a_small_one() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=2, max_wait_seconds=0.0)
    b.submit(0)
    assert rec.entered.wait(2)
    big = b.new_flow()
    bulk = [b.submit(i, flow=big) for i in range(100, 110)]
    single = b.submit(7)  # arrives after all ten of the big call
    rec.gate.set()
    assert single.result(2) == 70 and [f.result(2) for f in bulk] == [i * 10 for i in range(100, 110)]
    b.close()
    assert rec.batches[1] == [100, 7], "the single job shares the very next step"


def test_steps_hold_at_most_the_token_budget_and_a_long_job_runs_alone() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=8, max_wait_seconds=0.0, max_step_tokens=10)
    b.submit(0, cost=1)
    assert rec.entered.wait(2)
    futures = [b.submit(i, cost=c) for i, c in ((1, 4), (2, 4), (3, 25), (4, 4), (5, 4))]
    rec.gate.set()
    assert [f.result(2) for f in futures] == [10, 20, 30, 40, 50]
    b.close()
    costs = {0: 1, 1: 4, 2: 4, 3: 25, 4: 4, 5: 4}
    assert [3] in rec.batches, "the 25-token job runs alone"
    assert all(sum(costs[i] for i in batch) <= 10 for batch in rec.batches if batch != [3])


def test_between_runs_other_flows_short_jobs_inside_a_long_step() -> None:
    order: list[list[int]] = []
    b: MicroBatcher[int, int]
    arrived = threading.Event()

    def run(items: list[int]) -> list[int]:
        order.append(list(items))
        if items == [1]:  # the long job: wait for the short one, then yield between "chunks"
            assert arrived.wait(2)
            b.between()
            order.append([-1])  # the long job's last chunk
        return items

    b = MicroBatcher(run, max_batch_size=4, max_wait_seconds=0.0, max_step_tokens=10)
    long_job = b.submit(1, cost=50)
    time.sleep(0.05)
    short = b.submit(2, cost=3)
    arrived.set()
    assert short.result(2) == 2 and long_job.result(2) == 1
    b.close()
    assert order == [[1], [2], [-1]], "the short job ran between the long job's chunks"


def busy_batcher(rec: Recorder, **limits: float) -> MicroBatcher[int, int]:
    """A batcher that measured ~500 tokens/s (100-token steps of ~0.2 s), with one step running
    (held by ``rec.gate``) and three more 100-token calls queued: ~0.8 s ahead of a new call."""
    b: MicroBatcher[int, int] = MicroBatcher(
        rec, max_batch_size=1, max_wait_seconds=0.0, max_step_tokens=100, **limits
    )
    b.admit(10_000)  # no pass measured yet: nothing to estimate from, so admitted
    slow_pass = threading.Event()

    def slow(items: list[int]) -> list[int]:
        slow_pass.wait(0.2)  # 100 tokens in ~0.2 s: ~500 tokens/s
        return items

    b.run_batch = slow
    assert b.submit(0, cost=100).result(2) == 0
    b.run_batch = rec
    rec.gate.clear()
    b.submit(1, cost=100)
    assert rec.entered.wait(2)
    for i in range(3):
        b.submit(10 + i, cost=100)
    return b


def test_calls_are_shed_at_once_when_their_wait_would_be_too_long() -> None:
    rec = Recorder()
    b = busy_batcher(rec, max_queue_delay_seconds=1.0)
    started = time.perf_counter()
    b.admit(100, deadline=time.monotonic() + 60)  # under the limit and in time: let in
    b.admit(1)  # a tiny call waits only for the pass now running and a token of each flow
    with pytest.raises(Overloaded, match="deadline"):
        b.admit(100, deadline=time.monotonic() + 0.5)
    for i in range(3):
        b.submit(20 + i, cost=100)  # ~1.4 s ahead now
    with pytest.raises(Overloaded, match=r"about 1\.\d+ s of work is ahead \(limit 1\.00 s\)"):
        b.admit(100)
    assert time.perf_counter() - started < 0.05, "shedding answers at once"
    rec.gate.set()
    b.close()


def test_the_wait_limit_in_steps_follows_the_measured_step_time() -> None:
    """Steps of ~0.2 s and a limit of 2: the ~0.8 s wait (the running step, three queued calls)
    exceeds it, where the limit in seconds (10 s) would let the call in."""
    rec = Recorder()
    b = busy_batcher(rec, max_queue_delay_seconds=10.0, max_queue_delay_steps=2.0)
    b.admit(1)  # a tiny call waits only for the step now running and a token of each flow
    with pytest.raises(Overloaded, match=r"about 0\.[6-9]\d s of work is ahead \(limit 0\.[2-5]\d s\)"):
        b.admit(100)
    wait = b.estimated_wait(100)
    assert wait is not None and wait.running > 0 and wait.total == wait.running + wait.queued
    rec.gate.set()
    b.close()
    assert Limits(1, 0.0, max_queue_delay_seconds=1.0, max_queue_delay_steps=0.5).delay_limit(0.6) == 0.3
    assert Limits(1, 0.0, max_queue_delay_seconds=0.2, max_queue_delay_steps=0.5).delay_limit(0.6) == 0.2
    assert Limits(1, 0.0).delay_limit(0.6) == 0.0


def test_a_call_first_in_line_waits_for_the_running_step_and_is_never_shed_for_it() -> None:
    """A single request beside a long job's chunk is let in, whatever is left of the chunk."""
    rec = Recorder()
    b = busy_batcher(rec, max_queue_delay_steps=0.1)  # a limit of ~0.02 s of wait
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(10)  # three calls queued first

    def slow(items: list[int]) -> list[int]:
        time.sleep(0.2)  # the measured rate stays ~500 tokens/s
        return items

    b.run_batch = slow
    rec.gate.set()
    deadline = time.monotonic() + 5
    while b.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    rec.gate.clear()
    b.run_batch = rec
    rec.entered.clear()
    b.submit(1, cost=100)  # a step of ~0.2 s runs again, nothing queued
    assert rec.entered.wait(2)
    b.admit(10)  # first in line: admitted though ~0.2 s of the step is left
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(500)  # first in line too, but five steps long: its wait counts
    b.submit(2, cost=10)
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(10)  # second in line: its wait counts
    rec.gate.set()
    b.close()


def held_batcher(
    rec: Recorder, seconds: float, cost: int, passes: int = 1, **limits: Any
) -> MicroBatcher[int, int]:
    """A batcher that timed ``passes`` steps of ``cost`` tokens taking ``seconds`` each, then has a
    step of ``cost`` tokens running, held by ``rec.gate``."""
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_wait_seconds=0.0, **limits)

    def slow(items: list[int]) -> list[int]:
        time.sleep(seconds)
        return items

    b.run_batch = slow
    for i in range(passes):
        assert b.submit(i, cost=cost).result(2) == i
    b.run_batch = rec
    rec.gate.clear()
    b.submit(-1, cost=cost)
    assert rec.entered.wait(2)
    return b


def test_calls_that_fit_the_next_step_beside_those_queued_first_are_never_shed_for_their_wait() -> None:
    """Packed steps of 4 jobs or 100 tokens: while a step runs, calls that arrive together all run
    in the next one and wait only for the running step, so none is shed for the others; a call
    that would have to wait a further step is (limit: 0.1 step, ~0.02 s)."""
    rec = Recorder()  # ~500 tokens/s, a full step running
    b = held_batcher(rec, 0.2, 100, max_batch_size=4, max_step_tokens=100, max_queue_delay_steps=0.1)
    for i in range(2):
        b.admit(10)  # third and fourth in line, ~0.25 s of wait: still the next step
        b.submit(10 + i, cost=10)
    b.admit(70)  # 90 tokens in three jobs: fits beside them
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(90)  # over the step's 100 tokens: it would wait a further step
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(10, jobs=3)  # three jobs beside two: over the step's 4
    b.submit(12, cost=10)
    b.submit(13, cost=10)
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(10)  # a fifth job: the next step is full
    rec.gate.set()
    b.close()
    assert rec.batches == [[-1], [10, 11, 12, 13]]


def test_one_prompt_per_step_is_a_full_step_so_such_a_server_sheds() -> None:
    """With ``max_batch_size`` 1 each step is full though far under the token budget: its rate is
    learnt and a long queue is shed (before, nothing was ever shed and callers timed out)."""
    rec = Recorder()  # 10 tokens in ~0.05 s: ~200 tokens/s
    b = held_batcher(rec, 0.05, 10, max_batch_size=1, max_step_tokens=512, max_queue_delay_seconds=0.1)
    assert b.estimated_wait(10) is not None
    for i in range(5):
        b.submit(10 + i, cost=10)  # ~0.25 s queued
    with pytest.raises(Overloaded, match="work is ahead"):
        b.admit(10)
    rec.gate.set()
    b.close()


def test_the_step_size_can_change_while_serving_and_is_checked() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=4, max_wait_seconds=0.0)
    try:
        b.reshape(max_batch_size=1, max_queue_delay_steps=0.0, max_queue_delay_jobs=8.0)
        assert b.max_batch_size == 1 and b.limits.max_queue_delay_jobs == 8.0
        assert b.limits.max_wait_seconds == 0.0  # the other limits kept
        with pytest.raises(ValueError, match="at least 1"):
            b.reshape(max_batch_size=0, max_queue_delay_steps=0.0, max_queue_delay_jobs=0.0)
        with pytest.raises(ValueError, match="must not be negative"):
            b.reshape(max_batch_size=1, max_queue_delay_steps=0.0, max_queue_delay_jobs=-1.0)
        assert b.submit(7).result(2) == 70 and rec.batches == [[7]]
    finally:
        b.close()


def test_a_worker_idle_since_before_a_reshape_steps_by_the_new_size() -> None:
    """The worker read its limits before waiting for work, so its first step after ``reshape``
    (the schedule, chosen after warm-up) could hold the old number of jobs."""
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_batch_size=4, max_wait_seconds=0.0)
    time.sleep(0.05)  # the worker waits for work
    b.reshape(max_batch_size=1, max_queue_delay_steps=0.0, max_queue_delay_jobs=0.0)
    with b._cond:  # both queued before the worker wakes
        futures = [b.submit(i) for i in (1, 2)]
    assert [f.result(2) for f in futures] == [10, 20]
    b.close()
    assert rec.batches == [[1], [2]]


def test_the_wait_limit_in_jobs_counts_typical_one_job_steps() -> None:
    """One job a step, 10-token jobs of ~0.05 s: a limit of 3 jobs is ~0.15 s of wait, whatever
    the token budget (a 512-token step would be ~2.5 s here)."""
    rec = Recorder()
    b = held_batcher(rec, 0.05, 10, passes=3, max_batch_size=1, max_step_tokens=512, max_queue_delay_jobs=3.0)
    wait = b.estimated_wait(10)
    assert wait is not None and wait.job == pytest.approx(0.05, rel=0.5) and wait.step > 1.0
    b.submit(2, cost=10)
    b.admit(10)  # ~0.1 s ahead: under ~0.15 s
    for i in range(3):
        b.submit(10 + i, cost=10)  # ~0.25 s ahead now
    with pytest.raises(Overloaded, match=r"work is ahead \(limit 0\.\d+ s\)"):
        b.admit(10)
    rec.gate.set()
    b.close()
    assert Limits(1, 0.0, max_queue_delay_jobs=8.0).delay_limit(0.6, 0.03) == pytest.approx(0.24)
