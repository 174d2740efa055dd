"""The sidecar's one way to get a verdict: the classifier over gRPC, behind a short-lived local memo.

:meth:`Judge.judge` has a single error channel: it always returns a
:class:`Judgement`, which holds either a verdict or the reason there is none
(``failure``: the classifier was unreachable, too slow, or refused the input
as unjudgeable). Callers decide per policy what an unjudged request gets.

The memo: the classifier has its own (Redis) cache, but reaching it still
costs a gRPC round trip; for a conversation the sidecar has just judged
(client retries, repeated system prompts, health-check traffic, hot
duplicates) that round trip is most of the sidecar's added latency. Entries
live briefly (default 30 s) so a new bundle's verdicts take over quickly, the
size is bounded (LRU), and only verdicts are kept: a failure is never
remembered. Keys are digests; no text is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.conversation import Message
from sidecar.exchange import Outcomes, Trace
from sidecar.grpc_clients import ClassifierClient, ServiceFailure
from steerguard.errors import InvalidInput, SteerguardError, TooLong
from steerguard.v1 import common_pb2

INVALID = "invalid"  # the failure kind of input the classifier refused to judge
OVERSIZE = "oversize"  # ... of input longer than the classifier's hard cap (the route's on_oversize)


def cache_key(messages: Sequence[Message], threshold: float | None, answer: str | None = None) -> bytes:
    """sha256 of the exact conversation, answer and threshold the classifier would see."""
    canon = json.dumps([[m.role, m.content] for m in messages] + [threshold, answer], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).digest()


class RecentVerdicts:
    """Bounded LRU with a time-to-live; ``max_entries == 0`` or ``ttl_s <= 0`` disables it."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max = max_entries if ttl_s > 0 else 0
        self._ttl = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, common_pb2.Verdict]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> common_pb2.Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: bytes, verdict: common_pb2.Verdict) -> None:
        if not self._max:
            return
        self._entries[key] = (time.monotonic() + self._ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Judgement:
    """A verdict, or why there is none.

    ``failure`` is a :class:`ServiceFailure` kind (``unavailable``,
    ``deadline``, ``error``) or ``invalid``; ``error`` is the error itself,
    whose ``reason`` is safe to show a client.
    """

    verdict: common_pb2.Verdict | None
    failure: str = ""
    error: SteerguardError | None = None

    @property
    def judged(self) -> bool:
        return self.verdict is not None


class Judge:
    """Verdicts for conversations, counted per stage (``request`` or ``response``)."""

    def __init__(
        self,
        classifier: ClassifierClient,
        outcomes: Outcomes,
        *,
        timeout_s: float,
        threshold: float | None,
        memo: RecentVerdicts,
    ) -> None:
        self.classifier = classifier
        self.outcomes = outcomes
        self.metrics = outcomes.metrics
        self.timeout_s = timeout_s
        self.threshold = threshold
        self.memo = memo

    async def judge(
        self, trace: Trace, stage: str, messages: list[Message], answer: str | None = None
    ) -> Judgement:
        """The verdict on ``messages`` or, given ``answer``, on that answer as the reply to them."""
        key = cache_key(messages, self.threshold, answer) if self.memo.enabled else b""
        kept = self.memo.get(key) if key else None
        if kept is not None:
            trace.fields[f"{stage}_local_cache"] = True
            self.metrics.local_cache_hits.labels(stage).inc()
            self._count(stage, kept)
            return Judgement(kept)
        judgement = await self._ask(trace, stage, messages, answer)
        if judgement.verdict is not None:
            if key:
                self.memo.put(key, judgement.verdict)
            self._count(stage, judgement.verdict)
        return judgement

    async def _ask(self, trace: Trace, stage: str, messages: list[Message], answer: str | None) -> Judgement:
        started = time.perf_counter()
        try:
            verdict = await self.classifier.classify(
                messages, timeout=self.timeout_s, threshold=self.threshold, answer=answer
            )
            return Judgement(verdict)
        except ServiceFailure as failure:
            self.outcomes.failure(trace, "classifier", failure.kind)
            self.metrics.verdicts.labels(stage, "unknown", "").inc()
            return Judgement(None, failure.kind, failure)
        except TooLong as exc:
            return Judgement(None, OVERSIZE, exc)
        except InvalidInput as exc:
            # The classifier refused the input as malformed: it cannot be judged.
            return Judgement(None, INVALID, exc)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.classify_latency.labels(stage).observe(elapsed)
            trace.fields[f"{stage}_classify_ms"] = round(elapsed * 1000.0, 3)

    def _count(self, stage: str, verdict: common_pb2.Verdict) -> None:
        label = "unsafe" if verdict.unsafe else "safe"
        self.metrics.verdicts.labels(stage, label, verdict.category if verdict.unsafe else "").inc()
