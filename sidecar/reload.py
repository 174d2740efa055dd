"""The policy in force, and swapping in a new version of its file without a restart.

Why: the sidecar runs in the chatbot's own pod, so a restart to change the
policy restarts the chatbot too. The policy file is read again when it
changes (checked every ``policy_poll_s``; a Kubernetes ConfigMap update swaps
the mounted file behind a symlink, which reading by content sees) and at once
on SIGHUP. A file that does not parse, or whose routes clash, keeps the old
policy: it is logged and counted (``steerguard_config_reloads_total{result}``),
never half-applied.

A swap is atomic: each request reads :attr:`LivePolicy.current` once, when it
arrives, and finishes on that version (its route, adapter and policy travel
in its :class:`~sidecar.exchange.Exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.metrics import Metrics
from sidecar.policy import Policy, load_policy
from sidecar.routing import Router
from steerguard.errors import SteerguardError
from steerguard.logs import get_logger

log = get_logger("steerguard.sidecar")


@dataclass(frozen=True)
class PolicyVersion:
    """One version of the policy and what is built from it."""

    policy: Policy
    router: Router
    digest: str  # short sha256 of the file's bytes, or of the parsed policy when there is no file

    @classmethod
    def build(cls, policy: Policy, digest: str = "") -> PolicyVersion:
        digest = digest or hashlib.sha256(repr(policy).encode()).hexdigest()[:16]
        return cls(policy, Router(policy), digest)

    @property
    def fails_closed(self) -> bool:
        """Some route answers 503 when the classifier is down (readiness follows it)."""
        return any(r.on_classifier_error.closed_on_outage for r in self.policy.routes)


class LivePolicy:
    """The version in force; :meth:`watch` swaps in new versions of its file."""

    def __init__(self, policy: Policy, path: str | None, metrics: Metrics) -> None:
        """``policy``: the file at ``path`` as read at start-up (None: the built-in default)."""
        self.path = Path(path) if path else None
        self.metrics = metrics
        self._seen = _digest(self.path) if self.path else ""
        self.current = PolicyVersion.build(policy, self._seen)
        self._wake = asyncio.Event()
        # Raises PolicyError for a policy the services cannot honour (sidecar.bundles.check_categories).
        self.validate: Callable[[Policy], None] = lambda _policy: None

    def reload_now(self) -> None:
        """Check the file at once (the SIGHUP handler)."""
        self._wake.set()

    def check(self) -> bool:
        """Load the file if its bytes changed; True when a new version is in force."""
        if self.path is None:
            return False
        digest = _digest(self.path)
        if not digest or digest == self._seen:
            return False
        self._seen = digest
        try:
            version = PolicyVersion.build(load_policy(self.path), digest)
            self.validate(version.policy)
        except SteerguardError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error(
                "policy_reload_rejected", file=str(self.path), reason=exc.reason, kept=self.current.digest
            )
            return False
        self.current = version
        self.metrics.config_reloads.labels("ok").inc()
        log.info("policy_reloaded", file=str(self.path), version=digest, shadow=version.policy.shadow)
        return True

    async def watch(self, interval_s: float) -> None:
        """Check every ``interval_s`` (0: only on :meth:`reload_now`) until cancelled."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s if interval_s > 0 else None)
            self._wake.clear()
            self.check()


def _digest(path: Path) -> str:
    """Short sha256 of the file's bytes; "" while it cannot be read (mid-swap)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""
