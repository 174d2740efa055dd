"""Micro-batching with fair, bounded steps: group concurrent requests into forward passes.

A forward pass over 16 short prompts costs far less than 16 passes over one
(per-op overhead and small matrix products dominate at batch 1 on CPU), so one
worker thread owns the model and takes jobs from the queue: it starts a
batch with the first job and takes every job already waiting, up to
``max_batch_size`` jobs and ``max_step_tokens`` tokens.

**Fairness.** Jobs belong to *flows* (one per classify call: a one-prompt
``Classify`` is a flow of one job, a ``ClassifyBatch`` of 64 prompts a flow of
64). A batch takes one job from each waiting flow in turn, so a big batch
cannot make a single request wait behind all of it; and the token budget
keeps every step short (~0.6 s on 2 cores), so a request that arrives
during a step waits for that step at most. A job longer than the budget
runs alone, in chunks (the core's chunked prefill), and between its chunks
the core calls :meth:`MicroBatcher.between`, which runs the short jobs of
other flows that arrived meanwhile.

**Admission.** Before queueing, :meth:`MicroBatcher.admit` estimates how
long a call would wait, from what the running step has left, the work ahead
of it under round-robin and the measured token rate, and sheds it at once
(``Overloaded``, gRPC ``RESOURCE_EXHAUSTED``) when that wait exceeds
``max_queue_delay_steps`` full steps (timed as they run, so the limit
follows the machine's speed), ``max_queue_delay_jobs`` typical jobs' own
steps (the unit of a queue that drains one job a step),
``max_queue_delay_seconds``, or its own deadline. Under overload the
excess is refused in milliseconds, and those admitted wait about as long
as at normal load, instead of every caller waiting until its deadline. A
call that fits the next step beside the new calls queued before it (which
that step takes first) runs whole in it: it is never shed for its wait
(only for its deadline). It waits for the running step and no more, the
least any call can wait, so shedding it would spare nobody: a single
request that arrives during a long job's chunk waits for that chunk and
runs, and with random arrivals at normal load the calls that come
together during one step are not shed for coming together. Once a call is
shed for its wait, the limit tightens to the waits admitted at normal
load for as long as calls keep being shed (``overload_wait_margin``;
:mod:`classifier_service.normal_wait`).

**Waiting to fill a pass.** The worker waits, at most ``max_wait_seconds``,
only for jobs it *expects*: as many as the previous batch held plus those
that queued while it ran. Clients that just got their answers usually send
their next request within a few milliseconds; without this wait they would
miss the batch that is starting, and N concurrent clients would settle into
two alternating half-size batches. A lone client expects nobody and never
waits. The wait is also capped at ``wait_fraction`` of the previous pass's
time: it is worth a small share of that pass and no more.

Each job carries a :class:`concurrent.futures.Future`. A future cancelled
before its batch starts (its client went away or its deadline passed) is
dropped, so abandoned work never reaches the model; work already running is
stopped by the core between chunks. A full queue refuses new jobs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Generic, NamedTuple, TypeVar

from classifier_service.normal_wait import NormalWait
from steerguard.errors import NotReady, Overloaded
from steerguard.logs import get_logger

log = get_logger("steerguard.classifier.batcher")

P = TypeVar("P")
R = TypeVar("R")

_RATE_WEIGHT = 0.3  # weight of the newest pass in the token-rate average


@dataclass
class _Job(Generic[P, R]):
    payload: P
    future: Future[R]
    flow: Hashable
    cost: int


class Wait(NamedTuple):
    """Seconds a new call would wait (for the running step, then queued work), then run; a full step."""

    running: float
    queued: float
    run: float
    step: float
    job: float  # a typical job's own step (one prompt a step: the step), from recent full steps
    first: bool  # it fits the next step beside the new calls queued before it: all of it runs there

    @property
    def total(self) -> float:
        return self.running + self.queued


@dataclass
class Limits:
    """How much one step may hold, and how long a caller may be made to wait."""

    max_batch_size: int
    max_wait_seconds: float
    max_queue: int = 1024
    wait_fraction: float = 0.1
    max_step_tokens: int = 0  # 0: no token budget (each job costs 1 unless told)
    max_queue_delay_seconds: float = 0.0  # 0: admit whatever fits the queue
    # Also shed a call whose estimated wait is longer than this many full steps (0: no such limit).
    max_queue_delay_steps: float = 0.0
    # ... or than this many typical jobs' own steps (0: no such limit): the unit of a server that
    # runs one job a step, whose queue drains one job at a time (classifier_service.schedule).
    max_queue_delay_jobs: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_seconds < 0:
            raise ValueError("max_wait_seconds must not be negative")
        if self.wait_fraction < 0:
            raise ValueError("wait_fraction must not be negative")
        delays = (self.max_queue_delay_seconds, self.max_queue_delay_steps, self.max_queue_delay_jobs)
        if min(self.max_step_tokens, *delays) < 0:
            raise ValueError("max_step_tokens and the queue delay limits must not be negative")

    def delay_limit(self, step_seconds: float, job_seconds: float = 0.0) -> float:
        """The longest estimated wait admitted, given a full step's and a typical job's measured
        time (0: no limit)."""
        limits = [
            self.max_queue_delay_seconds,
            self.max_queue_delay_steps * step_seconds,
            self.max_queue_delay_jobs * job_seconds,
        ]
        return min((limit for limit in limits if limit > 0), default=0.0)


class _Queue(Generic[P, R]):
    """Jobs per flow, taken round-robin; not thread-safe (the batcher holds its lock).

    Flows not served yet come first, in arrival order; a flow that was
    served goes to the back. So a single request that arrives while a big
    call runs is taken next, not after one more of the big call's jobs.
    """

    def __init__(self) -> None:
        self.fresh: OrderedDict[Hashable, deque[_Job[P, R]]] = OrderedDict()
        self.served: OrderedDict[Hashable, deque[_Job[P, R]]] = OrderedDict()
        self.count = 0
        self.cost = 0

    def put(self, job: _Job[P, R]) -> None:
        jobs = self.served.get(job.flow)
        if jobs is None:
            jobs = self.fresh.setdefault(job.flow, deque())
        jobs.append(job)
        self.count += 1
        self.cost += job.cost

    def _pop(self, flow: Hashable) -> _Job[P, R]:
        jobs = self.fresh.pop(flow, None) or self.served.pop(flow)
        head = jobs.popleft()
        if jobs:
            self.served[flow] = jobs  # to the back of the round
        self.count -= 1
        self.cost -= head.cost
        return head

    def take(
        self, room: int, budget: int | None, exclude: frozenset[Hashable], *, first: bool
    ) -> list[_Job[P, R]]:
        """Up to ``room`` live jobs, one per flow in turn, within ``budget`` tokens.

        With ``first``, the first job is taken whatever its cost (a job over
        the budget then runs alone). Cancelled jobs are dropped on the way.
        """
        out: list[_Job[P, R]] = []
        spent = 0
        progress = True
        while len(out) < room and progress:
            progress = False
            for flow, jobs in [*self.fresh.items(), *self.served.items()]:
                if len(out) >= room:
                    break
                alone = first and not out
                if flow in exclude or (not alone and budget is not None and spent + jobs[0].cost > budget):
                    continue
                head = self._pop(flow)
                progress = True
                if not head.future.set_running_or_notify_cancel():
                    continue  # its caller gave up while it waited
                out.append(head)
                spent += head.cost
                if alone and budget is not None and head.cost > budget:
                    return out
        return out

    def fresh_work(self) -> tuple[int, int]:
        """Jobs and tokens queued by calls not served yet: what the next step takes first."""
        return sum(len(jobs) for jobs in self.fresh.values()), sum(
            job.cost for jobs in self.fresh.values() for job in jobs
        )

    def ahead(self, cost: int) -> int:
        """Tokens of other flows served before a new flow of ``cost`` tokens is done, under round-robin."""
        flows = [*self.fresh.values(), *self.served.values()]
        return sum(min(sum(j.cost for j in jobs), cost) for jobs in flows)


class MicroBatcher(Generic[P, R]):
    """A worker thread running ``run_batch(payloads) -> results`` on grouped jobs.

    A result may be an exception instance: that job's caller gets it raised.
    ``after_batch(payloads, results)`` runs after the futures are resolved
    (used to write the cache without delaying the answers).
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], Sequence[R | BaseException]],
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        max_queue: int = 1024,
        wait_fraction: float = 0.1,
        max_step_tokens: int = 0,
        max_queue_delay_seconds: float = 0.0,
        max_queue_delay_steps: float = 0.0,
        max_queue_delay_jobs: float = 0.0,
        overload_wait_margin: float = 0.0,
        after_batch: Callable[[list[P], Sequence[R | BaseException]], None] | None = None,
        name: str = "micro-batcher",
    ) -> None:
        self.limits = Limits(
            max_batch_size,
            max_wait_seconds,
            max_queue,
            wait_fraction,
            max_step_tokens,
            max_queue_delay_seconds,
            max_queue_delay_steps,
            max_queue_delay_jobs,
        )
        # Once a call is shed for its wait, calls are held to this many times the p99 wait admitted
        # at normal load until none has been shed for a while (0: off; normal_wait).
        self._normal = NormalWait(overload_wait_margin)
        self.run_batch = run_batch
        self.after_batch = after_batch
        self._last_run_seconds: float | None = None  # how long the previous batch took
        self._rate: float | None = None  # tokens per second of recent full passes (None: none yet)
        self._job_cost = 0.0  # tokens per job in recent full passes
        self._queue: _Queue[P, R] = _Queue()
        self._cond = threading.Condition()
        self._running: frozenset[Hashable] = frozenset()  # flows of the step on the model now
        self._running_cost = 0  # its tokens
        self._running_since = 0.0  # when it started (time.monotonic)
        self._nested = False
        self._nested_cost = 0  # tokens run between the chunks of the step now running
        self._closed = False
        self._flow_ids = itertools.count()
        self._expected = 1  # jobs the next batch should wait for (see the module docstring)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------

    @property
    def max_batch_size(self) -> int:
        return self.limits.max_batch_size

    def reshape(
        self, *, max_batch_size: int, max_queue_delay_steps: float, max_queue_delay_jobs: float
    ) -> None:
        """Steps from the next one hold at most ``max_batch_size`` jobs, and calls are shed by the
        given wait limits (the classifier's schedule, chosen once its engines are timed); checked
        as the constructor's limits are."""
        with self._cond:
            self.limits = replace(
                self.limits,
                max_batch_size=max_batch_size,
                max_queue_delay_steps=max_queue_delay_steps,
                max_queue_delay_jobs=max_queue_delay_jobs,
            )

    @property
    def queued(self) -> int:
        return self._queue.count

    @property
    def busy(self) -> bool:
        """True while a step runs or jobs wait."""
        return bool(self._running) or self._queue.count > 0

    def new_flow(self) -> Hashable:
        """A key for one caller's jobs (they share one turn of the round-robin)."""
        return ("flow", next(self._flow_ids))

    def estimated_wait(self, cost: int, jobs: int = 1) -> Wait | None:
        """How long a new flow of ``jobs`` jobs, ``cost`` tokens, would wait, and then run (None
        before a full pass).

        It waits for what the step now running has left (at most one step: a
        long job yields between chunks), then for the queued work that
        round-robin serves before this flow is done: of each other flow, as
        much as this one's own cost.
        """
        rate = self._rate
        if rate is None:
            return None  # small passes' rate understates a busy server's: no guess from them
        step = self.limits.max_step_tokens or self._running_cost
        with self._cond:
            ahead = self._queue.ahead(cost)
            queued_jobs, queued_cost = self._queue.fresh_work()  # the next step takes these first
            first = queued_jobs + jobs <= self.limits.max_batch_size and queued_cost + cost <= (step or cost)
            running = min(self._running_cost, step) / rate - (time.monotonic() - self._running_since)
        job = self._job_cost / rate
        return Wait(max(0.0, running), ahead / rate, cost / rate, (step or cost) / rate, job, first)

    def admit(self, cost: int, deadline: float | None = None, jobs: int = 1) -> None:
        """Raise ``Overloaded`` when a call of ``jobs`` jobs, ``cost`` tokens, would wait too long (see
        the docstring)."""
        wait = self.estimated_wait(cost, jobs)
        if wait is None:
            return
        limit = self.limits.delay_limit(wait.step, wait.job)
        allowed = limit * self._normal.allowed()
        if limit > 0 and wait.total > allowed and not wait.first:
            self._normal.refused(limit)
            held = "" if allowed == limit else ", the normal wait while overloaded"
            raise Overloaded(
                f"the classifier is overloaded: about {wait.total:.2f} s of work is ahead "
                f"(limit {allowed:.2f} s{held})"
            )
        if deadline is not None and time.monotonic() + wait.total + wait.run > deadline:
            raise Overloaded(
                f"the classifier is overloaded: about {wait.total:.1f} s of work is ahead, "
                f"and it could not finish before the deadline"
            )
        self._normal.admitted(wait.total, limit)

    def submit(self, payload: P, *, flow: Hashable | None = None, cost: int = 1) -> Future[R]:
        """Queue one job; raises ``Overloaded`` when the queue is full, ``NotReady`` after close."""
        future: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise NotReady("the classifier is shutting down")
            if self._queue.count >= self.limits.max_queue:
                raise Overloaded(f"the classifier queue is full ({self.limits.max_queue} waiting)")
            self._queue.put(_Job(payload, future, self.new_flow() if flow is None else flow, cost))
            self._cond.notify_all()
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def wait_budget(self) -> float:
        """Seconds the next batch may wait for expected jobs (see the module docstring)."""
        if self._last_run_seconds is None:
            return self.limits.max_wait_seconds
        return min(self.limits.max_wait_seconds, self.limits.wait_fraction * self._last_run_seconds)

    def between(self) -> None:
        """Run the short jobs of other flows that are waiting (``run_batch`` calls this between chunks).

        Only from the worker thread, and not from inside a step it started.
        """
        if threading.current_thread() is not self._thread or self._nested:
            return
        budget = self.limits.max_step_tokens or None
        with self._cond:
            jobs = self._queue.take(self.limits.max_batch_size, budget, self._running, first=False)
        if not jobs:
            return
        self._nested = True
        try:
            self._run(jobs)
        finally:
            self._nested = False

    # -- worker ---------------------------------------------------------------

    def _collect(self) -> list[_Job[P, R]] | None:
        """The next batch (None once closed and drained)."""
        with self._cond:
            while not self._queue.count:
                if self._closed:
                    return None
                self._cond.wait()
            lim = self.limits  # read after the wait: ``reshape`` may have run meanwhile
            budget = lim.max_step_tokens or None
            batch = self._queue.take(lim.max_batch_size, budget, frozenset(), first=True)
            target = min(lim.max_batch_size, self._expected)
            until = time.monotonic() + self.wait_budget()
            while batch and len(batch) < lim.max_batch_size:
                room = None if budget is None else budget - sum(j.cost for j in batch)
                if room is not None and room <= 0:
                    break  # full (or one long job, which runs alone)
                more = self._queue.take(lim.max_batch_size - len(batch), room, frozenset(), first=False)
                batch.extend(more)
                if more:
                    continue
                remaining = until - time.monotonic()
                if self._queue.count or len(batch) >= target or remaining <= 0 or self._closed:
                    break  # what waits does not fit, or nobody more is expected in time
                self._cond.wait(remaining)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            if batch:
                self._run(batch)
            self._expected = max(1, len(batch) + self._queue.count)

    def _run(self, jobs: list[_Job[P, R]]) -> None:
        payloads = [job.payload for job in jobs]
        outer, outer_cost = self._running, self._running_cost
        self._running = outer | {job.flow for job in jobs}
        self._running_cost = outer_cost + sum(job.cost for job in jobs)
        started = time.monotonic()
        if not self._nested:
            self._running_since = started
        try:
            results = self.run_batch(payloads)
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} jobs")
        except BaseException as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self._running, self._running_cost = outer, outer_cost
        self._note_time(time.monotonic() - started, sum(job.cost for job in jobs), len(jobs))
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self.after_batch is not None:
            try:
                self.after_batch(payloads, results)
            except Exception:
                log.exception("after_batch failed")

    def _note_time(self, seconds: float, cost: int, jobs: int) -> None:
        """Remember the pass's time (for the wait) and token rate (for admission).

        The rate that matters is that of full steps: a long queue drains in
        them. A step is full when it holds ``max_batch_size`` jobs or half the
        token budget. Small steps (one prompt at a time, at low load, where
        more could run together) run at half that rate or less, so they are
        not counted; until a full step has run, nothing is shed on an estimate
        (a queue that long makes full steps). With ``max_batch_size`` 1 every
        step is full: before that rule such a server never learned its rate
        and never shed (docs/benchmarks.md).
        """
        if self._nested:
            self._nested_cost += cost  # its time is inside the outer step's, which counts both
            return
        cost, self._nested_cost = cost + self._nested_cost, 0
        self._last_run_seconds = seconds
        if seconds <= 0 or cost <= 0:
            return
        full = jobs >= self.limits.max_batch_size or 2 * cost >= self.limits.max_step_tokens
        if self.limits.max_step_tokens and not full:
            return
        rate, job_cost = cost / seconds, cost / max(1, jobs)
        if self.limits.max_step_tokens:
            job_cost = min(job_cost, self.limits.max_step_tokens)  # a long job's chunks are steps
        if self._rate is None:
            self._rate, self._job_cost = rate, job_cost
            return
        self._rate = (1 - _RATE_WEIGHT) * self._rate + _RATE_WEIGHT * rate
        self._job_cost = (1 - _RATE_WEIGHT) * self._job_cost + _RATE_WEIGHT * job_cost
