"""In-process LRU verdict cache, used when no Redis URL is configured.

Bounded by entry count (a verdict is a few hundred bytes) and by TTL, so a
long-running process neither grows without bound nor serves verdicts older
than a Redis deployment would.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from classifier_service.cache.base import VerdictCache, as_cached
from steerguard.verdict import Verdict


class MemoryCache(VerdictCache):
    backend = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ttl_seconds)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get_many(self, keys: Sequence[str]) -> list[Verdict | None]:
        now = self._clock()
        out: list[Verdict | None] = []
        with self._lock:
            for key in keys:
                entry = self._items.get(key)
                if entry is None:
                    out.append(None)
                elif entry[0] <= now:
                    del self._items[key]
                    out.append(None)
                else:
                    self._items.move_to_end(key)
                    out.append(entry[1])
        return out

    def set_many(self, items: Mapping[str, Verdict]) -> None:
        expires = self._clock() + self.ttl_seconds
        with self._lock:
            for key, verdict in items.items():
                self._items[key] = (expires, as_cached(verdict))
                self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
