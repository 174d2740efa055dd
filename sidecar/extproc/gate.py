"""The ext_proc front end's decisions: a chat request's body in, "continue" or an immediate answer out.

The sidecar's request flow without the proxying (``sidecar.proxy``): the
same adapters parse the body, the same :class:`~sidecar.judge.Judge` asks
the classifier, the same policy decides, with the same headers and error
bodies. What differs is only how the outcome is delivered: Envoy forwards a
:class:`Continue` itself, and sends an :class:`Immediate` to the client in
place of the upstream's answer. There is no steer service here: a ``steer``
rule answers with the refusal (marked ``x-steerguard-failure:
steer-unsupported``); route to the sidecar for steered answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.adapters.base import ReplyMeta, parse_request, refusal
from sidecar.conversation import ChatRequest, context_for_classifier
from sidecar.decisions import at_threshold, decide, rule_category, threshold_for
from sidecar.exchange import H_FAILURE, H_UNJUDGED, Trace, verdict_headers
from sidecar.http_errors import MethodNotAllowed, classifier_failure, status_of
from sidecar.judge import INVALID, OVERSIZE, Judge, Judgement
from sidecar.policy import Action, FailureMode, Oversize
from sidecar.reload import LivePolicy, PolicyVersion
from sidecar.routing import Match, refuse_coding, refuse_unknown
from steerguard.errors import InvalidInput, PayloadTooLarge, SteerguardError, TooLong
from steerguard.logs import get_logger
from steerguard.v1 import common_pb2

log = get_logger("steerguard.extproc")

# What a client whose body is compressed is told: Envoy's decompressor filter, placed before
# ext_proc in the filter chain, hands ext_proc (and the upstream) the decoded body.
DECOMPRESS = "send the body uncompressed, or put Envoy's decompressor filter before ext_proc"


@dataclass(frozen=True)
class Continue:
    """Let the request through; ``headers`` go on the upstream request and the client's response."""

    headers: dict[str, str]


@dataclass(frozen=True)
class Immediate:
    """Answer the client now, instead of the upstream."""

    status: int
    headers: dict[str, str]
    body: bytes
    details: str  # for Envoy's access log: why


Outcome = Continue | Immediate


@dataclass
class Check:
    """One chat request being checked: where it goes, under which policy, and what it earned."""

    trace: Trace
    match: Match
    version: PolicyVersion
    marks: dict[str, str] = field(default_factory=dict)


def error_answer(trace: Trace, error: SteerguardError, marks: dict[str, str] | None = None) -> Immediate:
    """The sidecar's JSON error body and status for ``error``."""
    status, code = status_of(error)
    body = json.dumps({"error": {"code": code, "message": error.reason}}).encode()
    headers = {"content-type": "application/json", "x-steerguard-error": code, **(marks or {})}
    trace.fields.update(status=status, error=code)
    return Immediate(status, headers, body, f"steerguard_{code}")


class Gate:
    """Judges chat request bodies for the ext_proc servicer."""

    def __init__(self, live: LivePolicy, judge: Judge) -> None:
        self.live = live
        self.judge = judge

    def route(self, headers: Mapping[str, str], has_body: bool) -> Check | Outcome:
        """The chat route a request is for; otherwise what happens to it, as the sidecar decides:
        another method on a chat path is refused (405: a GET with a body would be a bypass), and a
        path no route names follows the policy's ``unknown_paths`` (by default, writes are refused)."""
        method, raw_path = headers.get(":method", ""), headers.get(":path", "/")
        version = self.live.current
        match = version.router.match(raw_path)
        if match is not None and method.upper() in match.route.methods:
            check = Check(Trace.for_headers(headers, match.route.path), match, version)
            check.trace.fields["policy_version"] = version.digest
            # Envoy hands over the body as the client sent it: a compressed one cannot be judged.
            coding = refuse_coding([headers.get("content-encoding", "")], None, accepted=DECOMPRESS)
            return check if coding is None else error_answer(check.trace, coding)
        trace = Trace.for_headers(headers, "passthrough" if match is None else match.route.path)
        if match is not None:
            allowed = ", ".join(match.route.methods)
            refused: SteerguardError | None = MethodNotAllowed(f"{match.route.path} takes {allowed}")
        else:
            refused = refuse_unknown(version.policy, method, has_body)
        if refused is None:
            return Continue({})
        answer = error_answer(trace, refused)
        log.info("extproc_request", request_id=trace.request_id, route=trace.route, **trace.fields)
        return answer

    async def check(self, check: Check, body: bytes) -> Outcome:
        """The outcome for one chat request body (every path ends in one log event)."""
        try:
            outcome = await self._check(check, body)
        finally:
            log.info(
                "extproc_request",
                request_id=check.trace.request_id,
                route=check.trace.route,
                **check.trace.fields,
            )
        return outcome

    async def _check(self, check: Check, body: bytes) -> Outcome:
        policy = check.version.policy
        try:
            chat = await parse_request(check.match.adapter, body)
        except SteerguardError as exc:
            return error_answer(check.trace, exc)
        if chat.unjudged:
            kinds = ", ".join(sorted(set(chat.unjudged)))
            check.marks[H_UNJUDGED] = kinds
            if policy.on_unjudged == "reject":
                reason = f"the request carries parts that cannot be judged ({kinds}; policy on_unjudged)"
                return error_answer(check.trace, InvalidInput(reason), check.marks)
        try:
            context = context_for_classifier(
                chat.messages, max_messages=policy.context_messages, max_chars=policy.context_chars
            )
        except TooLong as exc:
            return self._oversize(check, Judgement(None, OVERSIZE, exc))
        judgement = await self.judge.judge(
            check.trace,
            "request",
            context,
            threshold=policy.threshold,
            lowest=policy.lowest_cut(check.match.route),
        )
        if judgement.verdict is None:
            return self._unjudged(check, judgement)
        return self._act(check, judgement.verdict, chat)

    def _mark(self, check: Check, verdict: common_pb2.Verdict | None, action: str, failure: str = "") -> None:
        check.marks.update(verdict_headers(verdict, action, check.trace.request_id))
        if failure:
            check.marks[H_FAILURE] = failure
        check.trace.fields["action"] = action

    def _oversize(self, check: Check, judgement: Judgement) -> Outcome:
        if check.match.route.on_oversize is Oversize.BLOCK:
            reason = judgement.error.reason if judgement.error else "the request is too long to judge"
            self._mark(check, None, "block", OVERSIZE)
            return error_answer(
                check.trace, PayloadTooLarge(f"{reason} (policy on_oversize: block)"), check.marks
            )
        self._mark(check, None, "flag", OVERSIZE)
        return Continue(check.marks)

    def _unjudged(self, check: Check, judgement: Judgement) -> Outcome:
        """No verdict: malformed input is the client's error; an outage follows ``on_classifier_error``."""
        if judgement.failure == OVERSIZE:
            return self._oversize(check, judgement)
        reason = judgement.error.reason if judgement.error else judgement.failure
        if judgement.failure == INVALID:
            self._mark(check, None, "refuse", "classifier-invalid")
            return error_answer(check.trace, judgement.error or InvalidInput(reason), check.marks)
        if check.match.route.on_classifier_error.mode_for(judgement.failure) is FailureMode.CLOSED:
            self._mark(check, None, "fail-closed", f"classifier-{judgement.failure}")
            error = classifier_failure(judgement.failure, f"request could not be checked: {reason}")
            return error_answer(check.trace, error, check.marks)
        self._mark(check, None, "fail-open", f"classifier-{judgement.failure}")
        return Continue(check.marks)

    def _act(self, check: Check, verdict: common_pb2.Verdict, chat: ChatRequest) -> Outcome:
        policy, route = check.version.policy, check.match.route
        verdict = at_threshold(verdict, threshold_for(policy, route, verdict))
        decision = decide(policy, verdict.unsafe, rule_category(policy, verdict))
        check.trace.fields.update(
            verdict="unsafe" if verdict.unsafe else "safe",
            score=round(verdict.score, 4),
            shadow=decision.shadow,
        )
        if decision.shadow:
            self._mark(check, verdict, "shadow")
            return Continue(check.marks)
        if decision.action in (Action.ALLOW, Action.FLAG):
            self._mark(check, verdict, decision.action.value)
            return Continue(check.marks)
        failure = "steer-unsupported" if decision.action is Action.STEER else ""
        self._mark(check, verdict, "block", failure)
        rule = decision.rule
        text = rule.message if rule and rule.message else policy.refusal_message
        meta = ReplyMeta("unsafe", True, verdict.category, verdict.score, "block")
        reply = refusal(check.match.adapter, chat, text, meta)
        headers = {"content-type": reply.content_type, **reply.headers, **check.marks}
        return Immediate(reply.status, headers, reply.body, "steerguard_block")
