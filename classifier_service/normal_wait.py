"""The waits a classifier admits at normal load, kept to while it is overloaded.

Why: a fixed wait limit must let through the queues that normal load makes
(with calls arriving at random, a dozen at once now and then), so at twice
the load, where every admitted call waits near the limit, admitted calls
wait as long as normal load's slowest or longer. Where normal load barely
queues (evenly spaced calls), that was 6-10x its p99 (docs/benchmarks.md).

The server knows its normal waits: the estimates of the calls it admitted
while it refused nobody. Once it refuses a call by the fixed limit (a queue
longer than normal load lets through), it holds every call to ``margin``
times the normal p99 of those estimates until it has refused nobody for a
while (``HOLD`` fixed limits' time), so under sustained overload the calls
it admits wait about as at normal load. A burst at normal load is judged by
the fixed limit alone, as before. The estimates of the calls admitted in the
``HOLD`` before a refusal are dropped, not learnt: they are the queue that
built up to it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

QUANTILE = 0.99  # the normal wait kept to: normal load's slowest 1 in 100
WINDOW = 1000  # admitted calls' estimates learnt from (the most recent)
MIN_SEEN = 200  # fewer learnt: the fixed limit alone (too few to know a p99)
FLOOR = 0.2  # the least share of the fixed limit allowed while overloaded
HOLD = 4.0  # overload lasts this many fixed limits' time after the last refusal


class NormalWait:
    """Shares of the fixed wait limit: learnt from admitted calls, enforced after a refusal."""

    def __init__(self, margin: float, clock: Callable[[], float] = time.monotonic) -> None:
        if margin < 0:
            raise ValueError("the overload wait margin must not be negative")
        self.margin = margin  # 0: off (the fixed limit alone)
        self._clock = clock
        self._learnt: deque[float] = deque(maxlen=WINDOW)
        self._recent: deque[tuple[float, float]] = deque()  # (when, share), not yet learnt
        self._until = -math.inf  # overloaded until then
        self._allowed: float | None = None  # the share while overloaded, from what was learnt
        self._lock = threading.Lock()

    def allowed(self) -> float:
        """The share of the fixed limit a call may wait now: 1 at normal load."""
        with self._lock:
            if self.margin <= 0 or self._clock() >= self._until:
                return 1.0
            if self._allowed is None:
                self._allowed = self._share()
            return self._allowed

    def _share(self) -> float:
        if len(self._learnt) < MIN_SEEN:
            return 1.0
        ordered = sorted(self._learnt)
        normal = ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
        return min(1.0, max(FLOOR, self.margin * normal))

    def admitted(self, wait_seconds: float, limit_seconds: float) -> None:
        """Note an admitted call's estimated wait under the fixed limit (learnt as a share of it
        once ``HOLD`` such limits have passed with no refusal)."""
        if self.margin <= 0 or limit_seconds <= 0:
            return
        with self._lock:
            now = self._clock()
            if now < self._until:
                return  # overloaded: not a normal wait
            self._recent.append((now, wait_seconds / limit_seconds))
            while self._recent and self._recent[0][0] <= now - HOLD * limit_seconds:
                self._learnt.append(self._recent.popleft()[1])
                self._allowed = None

    def refused(self, limit_seconds: float) -> None:
        """A call was refused for its wait, the fixed limit being ``limit_seconds``: overloaded
        for ``HOLD`` such limits from now, and the waits that built up to it are not learnt."""
        if self.margin <= 0:
            return
        with self._lock:
            self._until = self._clock() + HOLD * limit_seconds
            self._recent.clear()
