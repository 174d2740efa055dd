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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from sidecar.conversation import Message
from sidecar.exchange import Outcomes, Trace
from sidecar.grpc_clients import ClassifierClient, ServiceFailure
from steerguard.errors import InvalidInput, SteerguardError, TooLong
from steerguard.v1 import common_pb2

INVALID = "invalid"  # the failure kind of input the classifier refused to judge
OVERSIZE = "oversize"  # ... of input longer than the classifier's hard cap (the route's on_oversize)


def cache_key(
    messages: Sequence[Message],
    threshold: float | None,
    answer: str | None = None,
    lowest: float | None = None,
) -> bytes:
    """sha256 of the exact conversation, answer and cuts the classifier would see."""
    canon = json.dumps(
        [[m.role, m.content] for m in messages] + [threshold, answer, lowest], ensure_ascii=False
    )
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
        memo: RecentVerdicts,
    ) -> None:
        self.classifier = classifier
        self.outcomes = outcomes
        self.metrics = outcomes.metrics
        self.timeout_s = timeout_s
        self.memo = memo

    async def judge(
        self,
        trace: Trace,
        stage: str,
        messages: list[Message],
        answer: str | None = None,
        *,
        threshold: float | None = None,
        lowest: float | None = None,
    ) -> Judgement:
        """The verdict on ``messages`` or, given ``answer``, on that answer as the reply to them.

        ``threshold``: the policy's, when it sets one (the bundle's otherwise);
        ``lowest``: the lowest cut the policy may apply (:meth:`Policy.lowest_cut`).
        """
        key = cache_key(messages, threshold, answer, lowest) if self.memo.enabled else b""
        kept = self.memo.get(key) if key else None
        if kept is not None:
            trace.fields[f"{stage}_local_cache"] = True
            self.metrics.local_cache_hits.labels(stage).inc()
            self.count(stage, kept)
            return Judgement(kept)
        call = self.classifier.classify(
            messages, timeout=self.timeout_s, threshold=threshold, answer=answer, lowest=lowest
        )
        judgement = await self.ask(trace, stage, call)
        if judgement.verdict is not None:
            if key:
                self.memo.put(key, judgement.verdict)
            self.count(stage, judgement.verdict)
        return judgement

    def answer_stream(self, trace: Trace, messages: list[Message], threshold: float | None) -> AnswerJudge:
        """Verdicts on one streamed answer to ``messages``, check by check (``ClassifyStream``)."""
        return AnswerJudge(self, trace, messages, threshold)

    async def ask(self, trace: Trace, stage: str, call: Awaitable[common_pb2.Verdict]) -> Judgement:
        """The verdict ``call`` gives, or why there is none (counted, timed)."""
        started = time.perf_counter()
        try:
            return Judgement(await call)
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

    def count(self, stage: str, verdict: common_pb2.Verdict) -> None:
        label = "unsafe" if verdict.unsafe else "safe"
        self.metrics.verdicts.labels(stage, label, verdict.category if verdict.unsafe else "").inc()


class AnswerJudge:
    """One streamed answer's checks over one ``ClassifyStream`` call.

    Each check sends only the text since the last one. After a check fails
    (the classifier unreachable or too slow) the call is gone and later checks
    fail too: the route's failure policy then decides, as for any unjudged text.
    A classifier without ``ClassifyStream`` (an older release during a rolling
    upgrade answers ``UNIMPLEMENTED``) is sent the whole answer so far at every
    check instead, as before the RPC existed; the client remembers that.
    """

    def __init__(self, judge: Judge, trace: Trace, messages: list[Message], threshold: float | None) -> None:
        self._judge, self._trace, self._messages, self._threshold = judge, trace, messages, threshold
        self._call = judge.classifier.answer_stream(messages, threshold=threshold)
        self._failed = False
        # The answer so far, kept only when the classifier cannot stream.
        self._resend: list[str] | None = [] if judge.classifier.stream_unimplemented else None

    async def safe(self, text: str) -> bool | None:
        """True when the answer so far is safe, False unsafe, None when it could not be judged."""
        if self._resend is not None:
            self._resend.append(text)
            answer = "".join(self._resend)
            whole = await self._judge.judge(
                self._trace, "response", self._messages, answer, threshold=self._threshold
            )
            return None if whole.verdict is None else not whole.verdict.unsafe
        if self._failed:
            return None
        judgement = await self._judge.ask(
            self._trace, "response", self._call.judge(text, timeout=self._judge.timeout_s)
        )
        if judgement.verdict is None:
            self._call.close()
            if isinstance(judgement.error, ServiceFailure) and judgement.error.code == "UNIMPLEMENTED":
                self._judge.classifier.stream_unimplemented = True
                self._resend = []
                return await self.safe(text)
            self._failed = True
            return None
        self._judge.count("response", judgement.verdict)
        return not judgement.verdict.unsafe

    def close(self) -> None:
        self._call.close()
