"""One request's state as it moves through the sidecar, and the one way each request ends.

An :class:`Exchange` carries everything the request flow needs (the HTTP
request, the route and its adapter, the parsed chat, the conversation the
classifier judges, the verdict and the headers it earned), so each step takes
one object. :class:`Outcomes` ends every request the same way: metrics, one
log event that never holds any text of the conversation, and an error body
whose reason is safe to show.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.adapters.base import Adapter
from sidecar.audit import AuditTrail
from sidecar.audit import event as audit_event
from sidecar.conversation import ChatRequest, Message
from sidecar.decisions import Decision
from sidecar.http_errors import error_response, status_of
from sidecar.metrics import Metrics
from sidecar.overlap import EarlySend
from sidecar.policy import Policy, Route
from steerguard.errors import SteerguardError
from steerguard.logs import get_logger
from steerguard.v1 import common_pb2

H_VERDICT = "x-steerguard-verdict"
H_ACTION = "x-steerguard-action"
H_CATEGORY = "x-steerguard-category"
H_HAZARD = "x-steerguard-hazard"  # the category's MLCommons hazard code (steerguard.taxonomy)
H_SCORE = "x-steerguard-score"
H_REQUEST_ID = "x-steerguard-request-id"
H_FAILURE = "x-steerguard-failure"
H_RESPONSE = "x-steerguard-response-verdict"
H_THRESHOLD = "x-steerguard-threshold"  # the cut in force (sidecar.decisions.threshold_for)
H_LANGUAGE = "x-steerguard-language"  # e.g. "fr (uncalibrated)"
H_CATEGORY_UNSURE = "x-steerguard-category-unsure"  # "true": the default rule applied, not the category's
H_UNJUDGED = "x-steerguard-unjudged"  # content parts with no text to read (images, audio), by type


@dataclass
class Trace:
    """What one request did; logged once at the end (never any text of the conversation)."""

    request_id: str
    route: str
    start: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)
    prompt_hmac: str = ""  # for the audit event only (sidecar.audit), never logged

    @classmethod
    def for_request(cls, request: web.Request, route: str) -> Trace:
        """The client's ``x-request-id`` when it sent one, else a fresh id."""
        return cls.for_headers(request.headers, route)

    @classmethod
    def for_headers(cls, headers: Mapping[str, str], route: str) -> Trace:
        return cls(headers.get("x-request-id") or uuid.uuid4().hex, route)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


@dataclass
class Exchange:
    """One chat request on its way through the sidecar."""

    request: web.Request
    trace: Trace
    route: Route
    adapter: Adapter
    policy: Policy  # the version in force when the request arrived (sidecar.reload swaps versions)
    body: bytes = b""
    chat: ChatRequest | None = None
    context: list[Message] = field(default_factory=list)
    verdict: common_pb2.Verdict | None = None
    decision: Decision | None = None
    marks: dict[str, str] = field(default_factory=dict)
    early: EarlySend | None = None  # sent upstream before the verdict (overlap mode)

    @property
    def parsed(self) -> ChatRequest:
        """The parsed chat (set before any step that needs it)."""
        assert self.chat is not None, "the request body has not been parsed yet"
        return self.chat

    def mark(self, action: str, failure: str | None = None) -> dict[str, str]:
        """Set (and return) the verdict headers for ``action``: what the client and the upstream see."""
        self.marks = verdict_headers(self.verdict, action, self.trace.request_id)
        if failure:
            self.marks[H_FAILURE] = failure
        if self.chat is not None and self.chat.unjudged:
            self.marks[H_UNJUDGED] = ",".join(sorted(set(self.chat.unjudged)))
        return self.marks


def verdict_headers(verdict: common_pb2.Verdict | None, action: str, request_id: str) -> dict[str, str]:
    if verdict is None:
        headers = {H_VERDICT: "unknown"}
    else:
        headers = {H_VERDICT: "unsafe" if verdict.unsafe else "safe", H_SCORE: f"{verdict.score:.4f}"}
        headers[H_THRESHOLD] = f"{verdict.threshold:.4f}"
        if verdict.unsafe and verdict.category:
            headers[H_CATEGORY] = verdict.category
        if verdict.unsafe and verdict.hazard:
            headers[H_HAZARD] = verdict.hazard
        if verdict.unsafe and verdict.category_unsure:
            headers[H_CATEGORY_UNSURE] = "true"
        if verdict.language:
            suffix = "" if verdict.language_calibrated else " (uncalibrated)"
            headers[H_LANGUAGE] = verdict.language + suffix
    headers[H_ACTION] = action
    headers[H_REQUEST_ID] = request_id
    return headers


class Outcomes:
    """How every request ends: counted, logged once, errors answered with a safe reason."""

    def __init__(self, metrics: Metrics, audit: AuditTrail) -> None:
        self.metrics = metrics
        self.audit = audit
        self.log = get_logger("steerguard.sidecar")

    def finish(self, trace: Trace, response: web.StreamResponse, **fields: Any) -> web.StreamResponse:
        trace.fields.update(fields)
        self.metrics.requests.labels(trace.route, str(response.status)).inc()
        level = "warning" if response.status >= 500 or trace.fields.get("failure") else "info"
        getattr(self.log, level)(
            "request",
            request_id=trace.request_id,
            route=trace.route,
            status=response.status,
            total_ms=round(trace.elapsed_ms(), 3),
            **trace.fields,
        )
        if self.audit.enabled:  # the event is built only when it goes somewhere
            fields = {**trace.fields, "prompt_hmac": trace.prompt_hmac}
            self.audit.record(audit_event(trace.request_id, trace.route, response.status, fields))
        return response

    def error(
        self, trace: Trace, error: SteerguardError, headers: dict[str, str] | None = None
    ) -> web.Response:
        status, code = status_of(error)
        if status < 500:
            self.metrics.bad_requests.labels(str(status)).inc()
        response = error_response(error, {H_REQUEST_ID: trace.request_id, **(headers or {})})
        self.finish(trace, response, error=code)
        return response

    def failure(self, trace: Trace, dependency: str, kind: str) -> None:
        """A dependency failed: counted, and named in the request's log event."""
        self.metrics.failures.labels(dependency, kind).inc()
        trace.fields["failure"] = f"{dependency}:{kind}"

    def duration(self, trace: Trace, action: str) -> None:
        self.metrics.request_duration.labels(trace.route, action).observe(time.perf_counter() - trace.start)
