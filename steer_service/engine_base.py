"""The caller's side that both decode loops share: a queue of jobs, one condition, one thread.

:class:`steer_service.engine.Engine` (the in-house loop) and
:class:`steer_service.vllm_engine.VllmEngine` differ in how they run jobs,
not in how jobs reach them: :meth:`submit` from any thread, refused when the
engine is shutting down or full, then the loop thread takes them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from steer_service import metrics
from steer_service.config import SteerConfig
from steer_service.jobs import Job
from steerguard.errors import NotReady, Overloaded

E = TypeVar("E", bound="EngineBase")


class EngineBase:
    # Whether flagged rows can decode with the bundle's refusal head (an LM-head hook).
    supports_refusal_head = True

    def __init__(self, config: SteerConfig, run: Callable[[], None], name: str) -> None:
        self.config = config
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._closed = False
        self._draining = False  # finish what is here, take nothing new, then stop (a bundle swap)
        self._idle = threading.Event()
        self._thread = threading.Thread(target=run, name=name, daemon=True)

    def _in_flight(self) -> int:
        """Jobs the loop has taken and not finished."""
        raise NotImplementedError

    def _full(self) -> bool:
        """True when one more job may not wait (called under the condition).

        At most ``max_batch_size`` run and ``max_queue`` wait beyond them.
        """
        return len(self._pending) + self._in_flight() >= self.config.max_queue + self.config.max_batch_size

    def start(self: E) -> E:
        self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the loop; jobs still open get ``UNAVAILABLE``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def drain(self) -> None:
        """Finish every running and waiting job, then stop: a bundle swap lets calls end where they began."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise NotReady("the steer service is shutting down")
            if self._full():
                metrics.REJECTED.labels("queue_full").inc()
                raise Overloaded("too many generations waiting; retry later")
            self._pending.append(job)
            self._idle.clear()
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify_all()

    def wake(self) -> None:
        """Let the loop notice a cancellation while it waits for work."""
        with self._cond:
            self._cond.notify_all()
