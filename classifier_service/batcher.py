"""Micro-batching: group concurrent requests into one forward pass.

A forward pass over 16 short prompts costs far less than 16 passes over one
(per-op overhead and small matrix products dominate at batch 1 on CPU), so one
worker thread owns the model and takes jobs from a bounded queue: it starts a
batch with the first job and takes every job already waiting, up to
``max_batch_size``.

It then waits, at most ``max_wait_seconds``, only for jobs it *expects*: as
many as the previous batch held plus those that queued while it ran. Clients
that just got their answers usually send their next request within a few
milliseconds; without this wait they would miss the batch that is starting,
and N concurrent clients would settle into two alternating half-size batches.
A lone client expects nobody and never waits, so batching adds no latency at
low load; an expectation that is not met costs one wait, then shrinks.

The wait is also capped at ``wait_fraction`` of the time the previous batch
took to run: the point of waiting is to fill that forward pass, so it is
worth a small share of it and no more. On 2 CPU cores a batch of 16 takes
~0.6 s and returning clients need 10-30 ms (GIL, gRPC, tokeniser), so the
whole ``max_wait_seconds`` applies; on an accelerator where a batch takes
5 ms the wait shrinks to half a millisecond by itself.

Each job carries a :class:`concurrent.futures.Future`. A future cancelled
before its batch starts (its client went away or its deadline passed) is
dropped, so abandoned work never reaches the model. A full queue refuses new
jobs (``Overloaded``) rather than letting latency grow without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from steerguard.errors import NotReady, Overloaded
from steerguard.logs import get_logger

log = get_logger("steerguard.classifier.batcher")

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Job(Generic[P, R]):
    payload: P
    future: Future[R]


_STOP = object()


class MicroBatcher(Generic[P, R]):
    """A worker thread running ``run_batch(payloads) -> results`` on grouped jobs.

    ``after_batch(payloads, results)`` runs after the futures are resolved
    (used to write the cache without delaying the answers).
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        max_queue: int = 1024,
        wait_fraction: float = 0.1,
        after_batch: Callable[[list[P], Sequence[R]], None] | None = None,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_seconds < 0:
            raise ValueError("max_wait_seconds must not be negative")
        if wait_fraction < 0:
            raise ValueError("wait_fraction must not be negative")
        self.run_batch = run_batch
        self.after_batch = after_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.wait_fraction = wait_fraction
        self._last_run_seconds: float | None = None  # how long the previous batch took
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._expected = 1  # jobs the next batch should wait for (see the module docstring)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, payload: P) -> Future[R]:
        """Queue one job; raises ``Overloaded`` when the queue is full, ``NotReady`` after close."""
        if self._closed.is_set():
            raise NotReady("the classifier is shutting down")
        future: Future[R] = Future()
        try:
            self._queue.put_nowait(_Job(payload, future))
        except queue.Full:
            raise Overloaded(f"the classifier queue is full ({self._queue.maxsize} waiting)") from None
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_STOP)  # blocks only while the queue is full, i.e. until jobs drain
        self._thread.join(timeout)

    def wait_budget(self) -> float:
        """Seconds the next batch may wait for expected jobs (see the module docstring)."""
        if self._last_run_seconds is None:
            return self.max_wait_seconds
        return min(self.max_wait_seconds, self.wait_fraction * self._last_run_seconds)

    # -- worker ---------------------------------------------------------------

    def _collect(self, first: _Job[P, R]) -> tuple[list[_Job[P, R]], bool]:
        """The batch that starts with ``first``; True when the stop marker was seen."""
        batch = [first]
        target = min(self.max_batch_size, self._expected)
        until = time.monotonic() + self.wait_budget()
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = until - time.monotonic()
                if len(batch) >= target or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stopping = self._collect(item)  # type: ignore[arg-type]
            # Futures cancelled while queued (client gone) are dropped here.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            self._expected = max(1, len(batch) + self._queue.qsize())

    def _run(self, jobs: list[_Job[P, R]]) -> None:
        payloads = [job.payload for job in jobs]
        started = time.monotonic()
        try:
            results = self.run_batch(payloads)
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} jobs")
        except BaseException as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        self._last_run_seconds = time.monotonic() - started
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
        if self.after_batch is not None:
            try:
                self.after_batch(payloads, results)
            except Exception:
                log.exception("after_batch failed")
