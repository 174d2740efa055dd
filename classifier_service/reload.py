"""The classifier's bundle swapped for a new version without a restart.

Why: a new bundle (recalibrated probe, new threshold) would otherwise be a
pod rollout. The bundle directory is read again when its files change
(checked every ``--bundle-poll-s``; in Kubernetes, a new bundle image or
volume swapped behind a symlink) and at once on SIGHUP.

A swap is atomic for callers: the new bundle is loaded, checked against the
loaded model (identity, and no deeper layers than were loaded) and warmed up
in a new core beside the serving one; only then does the servicer answer
with it. RPCs already running finish on the old core, which then drains its
queue and is dropped; the verdict cache is shared, and its keys carry the
bundle id, so the new bundle never reads the old one's verdicts. A bundle
that fails to load or check keeps the old one, logged and counted
(``steerguard_config_reloads_total{result="invalid"}``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from classifier_service import metrics
from classifier_service.core import ClassifierCore
from classifier_service.servicer import ClassifierServicer
from steerguard.bundle import Bundle
from steerguard.errors import SteerguardError
from steerguard.logs import get_logger
from steerguard.model.host import ModelHost

log = get_logger("steerguard.classifier")


class BundleReload:
    """Checks the bundle directory and swaps the servicer's core when it changed."""

    def __init__(
        self,
        path: str | Path,
        servicer: ClassifierServicer,
        host: ModelHost,
        make_core: Callable[[Bundle], ClassifierCore],
    ) -> None:
        self.path = Path(path)
        self.servicer, self.host, self.make_core = servicer, host, make_core
        self._seen = directory_digest(self.path)

    def check(self) -> bool:
        """Load the directory if its files changed; True when a new bundle is being served."""
        digest = directory_digest(self.path)
        if not digest or digest == self._seen:
            return False
        self._seen = digest
        try:
            bundle = Bundle.load(self.path)
            bundle.verify_model(self.host.identity)
            core = self.make_core(bundle)
            core.warm_up()
        except SteerguardError as exc:
            metrics.CONFIG_RELOADS.labels(result="invalid").inc()
            log.error("bundle_reload_rejected", path=str(self.path), reason=exc.reason)
            return False
        except Exception as exc:  # never take the serving process down: keep the old bundle
            metrics.CONFIG_RELOADS.labels(result="invalid").inc()
            log.error("bundle_reload_rejected", path=str(self.path), reason="internal error", exc_info=exc)
            return False
        old = self.servicer.attach(core)  # closes once the calls still on it end
        metrics.CONFIG_RELOADS.labels(result="ok").inc()
        log.info("bundle_reloaded", bundle_id=bundle.bundle_id, previous=old.bundle_id if old else None)
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
