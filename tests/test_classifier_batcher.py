"""The micro-batcher on its own: grouping, bounds, cancellation, errors, overload, drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import pytest

from classifier_service.batcher import MicroBatcher
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
