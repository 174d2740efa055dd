"""One generation request as the engine sees it, and the handle its caller iterates.

The RPC thread validates and tokenises (so bad input fails before any model
work and never touches the running batch), then hands a :class:`Job` to the
engine and iterates its :class:`JobHandle`. The engine thread is the only one
that touches the model; the two sides talk through a queue of :class:`Chunk`
(or an exception) and a cancellation flag.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from steerguard.generation import SamplingParams
from steerguard.plan import Applied, SteeringRequest


@dataclass(frozen=True)
class Chunk:
    """Text produced by one step; the last chunk of a request also says how it ended."""

    text: str
    finish_reason: str = ""  # "stop", "length" or "cancelled" on the last chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0
    applied: Applied | None = None

    @property
    def final(self) -> bool:
        return bool(self.finish_reason)


class JobHandle:
    """The caller's side of a job: iterate chunks, or cancel.

    ``cancel`` may be called from any thread, any number of times (gRPC's
    termination callback and the RPC generator's ``finally`` both call it);
    the engine drops the row at its next step, which frees the slot.
    """

    def __init__(self, job_id: str, wake: Callable[[], None] = lambda: None) -> None:
        self.id = job_id
        self._queue: queue.SimpleQueue[Chunk | Exception] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._wake = wake
        self.done = threading.Event()

    def cancel(self) -> None:
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def put(self, item: Chunk | Exception) -> None:
        """Engine side: deliver a chunk, or an exception that ends the request."""
        if isinstance(item, Exception) or item.final:
            self.done.set()
        self._queue.put(item)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._queue.get()
            if isinstance(item, Exception):
                raise item
            yield item
            if item.final:
                return


@dataclass
class Job:
    """A validated, tokenised request waiting for or holding a batch row."""

    prompt_ids: list[int]
    sampling: SamplingParams
    steering: SteeringRequest
    handle: JobHandle
    digest: str = ""
    deadline: float | None = None  # time.monotonic() after which the row is dropped
    submitted: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline
