"""Do the classifier and the steer service serve the same bundle?

Why: the sidecar steers with the category the classifier names, into the
steer service's vectors, at the threshold the classifier's bundle was
calibrated for. Two bundles side by side (a half-finished rollout, a
mistyped image tag) give verdicts and steering that were never calibrated
together, and nothing else would notice. Both services answer
``DescribeBundle``; the sidecar compares their bundle ids at start-up and
every ``interval_s`` (so a service rolled to another bundle is seen too).

``--bundle-mismatch warn`` (default) logs the two ids and sets
``steerguard_sidecar_bundle_mismatch`` to 1; ``refuse`` also answers chat
requests 503 ``bundle_mismatch`` and reports the pod unready until they
agree. A service that cannot be asked leaves the last answer standing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sidecar.grpc_clients import ClassifierClient, SteerClient
from sidecar.metrics import Metrics
from sidecar.policy import Policy, PolicyError
from sidecar.settings import BUNDLE_MISMATCH_MODES
from steerguard.errors import SteerguardError
from steerguard.logs import get_logger
from steerguard.taxonomy import hazards_of

log = get_logger("steerguard.sidecar")


class BundleCheck:
    """The last comparison of the two services' bundle ids: ``unknown``, ``match`` or ``mismatch``."""

    def __init__(
        self, classifier: ClassifierClient, steer: SteerClient, mode: str, metrics: Metrics, interval_s: float
    ) -> None:
        if mode not in BUNDLE_MISMATCH_MODES:
            raise ValueError(f"bundle mismatch mode must be one of {BUNDLE_MISMATCH_MODES}, got {mode!r}")
        self.classifier, self.steer = classifier, steer
        self.mode, self.metrics, self.interval_s = mode, metrics, interval_s
        self.state = "unknown"
        self.ids: tuple[str, str] = ("", "")
        self.categories: tuple[str, ...] | None = None  # the classifier's bundle's, once known

    @property
    def refusing(self) -> bool:
        return self.mode == "refuse" and self.state == "mismatch"

    async def check(self, timeout: float = 2.0) -> str:
        """Ask both services; the new state (unchanged when either cannot answer)."""
        try:
            ours = await self.classifier.describe(timeout)
        except SteerguardError:
            return self.state
        self.categories = tuple(ours.categories)  # the policy check needs only the classifier
        try:
            theirs = await self.steer.describe(timeout)
        except SteerguardError:
            return self.state
        ids = (ours.bundle_id, theirs.bundle_id)
        state = "match" if ids[0] == ids[1] else "mismatch"
        if state == "mismatch" and (state, ids) != (self.state, self.ids):
            log.warning("bundle_mismatch", classifier=ids[0], steer=ids[1], mode=self.mode)
        self.state, self.ids = state, ids
        self.metrics.bundle_mismatch.set(1 if state == "mismatch" else 0)
        return state

    async def watch(self) -> None:
        """Check now, then every ``interval_s`` until cancelled."""
        while True:
            with contextlib.suppress(Exception):  # a failed check keeps the last state; try again later
                await self.check()
            await asyncio.sleep(self.interval_s)


def check_categories(policy: Policy, categories: Sequence[str] | None, bundle_id: str = "") -> None:
    """``PolicyError`` naming every policy category the classifier's bundle cannot produce.

    Why: a rule for a category the bundle does not have never fires, silently
    (``self_harm`` in a policy over a bundle without it). Unknown categories
    (the classifier not asked yet) pass; the next check catches them.
    """
    if categories is None:
        return
    hazards = hazards_of(tuple(categories))
    unknown = sorted(set(policy.categories) - set(categories) - hazards)
    if unknown:
        codes = ", ".join(sorted(hazards, key=lambda h: int(h[1:]))) or "(none)"
        raise PolicyError(
            f"policy.categories: {', '.join(unknown)} cannot be produced by the classifier's bundle "
            f"{bundle_id}; its categories are {', '.join(sorted(categories)) or '(none)'}, "
            f"and their MLCommons hazard codes {codes}"
        )
