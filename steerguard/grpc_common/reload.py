"""A service's bundle swapped for a new version without a restart (the classifier and the steer service).

Why: a new bundle (recalibrated probe, new threshold, new vectors) would
otherwise be a pod rollout. The bundle directory is read again when its
files change (checked every ``--bundle-poll-s``; in Kubernetes, a new bundle
volume swapped behind a symlink) and at once on SIGHUP.

A swap is atomic for callers: the new bundle is loaded, checked against the
loaded model and started (warmed up) beside the serving one; only then is it
served. Calls already running finish on the old one, which then stops
(``swap`` says how). A bundle that fails to load, check or start keeps the
old one, logged and counted (``steerguard_config_reloads_total{result}``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import Counter

from steerguard.errors import SteerguardError
from steerguard.logs import get_logger

if TYPE_CHECKING:  # the model side: imported only where a service runs
    from steerguard.bundle import Bundle
    from steerguard.model.host import ModelHost

log = get_logger("steerguard.reload")

CONFIG_RELOADS = Counter(
    "steerguard_config_reloads_total",
    "bundle reloads: ok (serving the new bundle) or invalid (the old one kept)",
    ["result"],
)

S = TypeVar("S")


class BundleReload(Generic[S]):
    """Checks the bundle directory; on a change builds a new serving core and swaps it in.

    ``make(bundle)`` returns a started, warmed core; ``swap(core)`` serves it
    and retires the old one once its calls end, returning the old bundle id.
    """

    def __init__(
        self, path: str | Path, host: ModelHost, make: Callable[[Bundle], S], swap: Callable[[S], str | None]
    ) -> None:
        self.path = Path(path)
        self.host, self.make, self.swap = host, make, swap
        self._seen = directory_digest(self.path)

    def check(self) -> bool:
        """Load the directory if its files changed; True when a new bundle is being served."""
        digest = directory_digest(self.path)
        if not digest or digest == self._seen:
            return False
        self._seen = digest
        from steerguard.bundle import Bundle

        try:
            bundle = Bundle.load(self.path)
            bundle.verify_model(self.host.identity)
            core = self.make(bundle)
        except SteerguardError as exc:
            CONFIG_RELOADS.labels(result="invalid").inc()
            log.error("bundle_reload_rejected", path=str(self.path), reason=exc.reason)
            return False
        except Exception as exc:  # never take the serving process down: keep the old bundle
            CONFIG_RELOADS.labels(result="invalid").inc()
            log.error("bundle_reload_rejected", path=str(self.path), reason="internal error", exc_info=exc)
            return False
        previous = self.swap(core)
        CONFIG_RELOADS.labels(result="ok").inc()
        log.info("bundle_reloaded", bundle_id=bundle.bundle_id, previous=previous)
        return True


def directory_digest(path: Path) -> str:
    """sha256 over the directory's file names and bytes; "" while it cannot be read."""
    h = hashlib.sha256()
    try:
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    except OSError:
        return ""
    return h.hexdigest()
