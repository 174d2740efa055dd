"""The core that answers RPCs, replaced without failing the calls still running on the old one.

Each RPC *leases* the current core for as long as it uses it (a stream: for
its whole life). Replacing the core (a bundle reload) makes new RPCs lease
the new one at once; the old core is closed only when its last lease ends,
so no call sees it shut down under it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from classifier_service.core import ClassifierCore
from steerguard.errors import NotReady


class CoreSlot:
    """The serving core, and how many RPCs hold each core."""

    def __init__(self, core: ClassifierCore | None = None) -> None:
        self.current = core
        self._leases: Counter[int] = Counter()
        self._retired: dict[int, ClassifierCore] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ClassifierCore]:
        """The current core, kept open until the block ends."""
        with self._lock:
            core = self.current
            if core is None:
                raise NotReady("the classifier is still loading its model")
            self._leases[id(core)] += 1
        try:
            yield core
        finally:
            with self._lock:
                self._leases[id(core)] -= 1
                done = self._leases[id(core)] == 0 and self._retired.pop(id(core), None) is not None
                if self._leases[id(core)] == 0:
                    del self._leases[id(core)]
            if done:
                _close_later(core)

    def replace(self, core: ClassifierCore) -> ClassifierCore | None:
        """Serve ``core`` from now on; the previous one closes once its last lease ends."""
        with self._lock:
            old, self.current = self.current, core
            if old is None:
                return None
            idle = self._leases[id(old)] == 0
            if not idle:
                self._retired[id(old)] = old
        if idle:
            _close_later(old)
        return old


def _close_later(core: ClassifierCore) -> None:
    """Drain and close off the caller's thread; the verdict cache stays (the new core shares it)."""
    threading.Thread(target=core.close, kwargs={"release_cache": False}, daemon=True).start()
