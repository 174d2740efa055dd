"""``envoy.service.ext_proc.v3.ExternalProcessor``: Envoy's messages decoded, the gate's outcomes encoded.

The protocol (Envoy's ext_proc documentation): one bidirectional stream per
HTTP request; Envoy sends the request headers, then (with
``request_body_mode: BUFFERED``) the whole body in one message, then, once
the upstream answers, the response headers; the server answers every
message it receives, in order, with the matching response, or at any point
with an ``ImmediateResponse``, after which Envoy answers the client and
sends nothing more. The servicer is thin: it keeps the stream's state
(route, verdict headers) and leaves every decision to :class:`Gate`.

A chat route's body must arrive whole: a body message without
``end_of_stream`` (``STREAMED`` or a partial buffer) is refused with 413
rather than judged in pieces or let through unjudged. A filter set up so
that a chat body cannot be judged at all is refused too (500,
``guard_misconfigured``), never passed: a ``request_body_mode`` other than
``BUFFERED`` named in Envoy's ``protocol_config`` (Envoy's default is
``NONE``), a body with no request headers before it (``request_header_mode:
SKIP``), or response headers for a chat request whose body never came (the
upstream has seen it then, but its answer is withheld). Each chat route's
headers response also asks for ``BUFFERED`` (``mode_override``, which Envoy
applies where ``allow_mode_override`` is set).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2

from sidecar.exchange import Trace
from sidecar.extproc.gate import Check, Continue, Gate, Immediate, Outcome, error_answer
from sidecar.http_errors import Misconfigured
from sidecar.upstream import GUARD_HEADERS
from steerguard.errors import InvalidInput, PayloadTooLarge


def header_map(headers: ep.HttpHeaders) -> dict[str, str]:
    """Envoy's headers (lower-case names; ``raw_value`` on current Envoy, ``value`` on older)."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        out[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


def mutation(headers: dict[str, str]) -> ep.HeaderMutation:
    """Set (overwrite) each header, values as ``raw_value`` bytes."""
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
            for k, v in headers.items()
        ]
    )


# The body mode that hands ext_proc a whole body in one message (Envoy's processing_mode.proto).
BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED
NO_BODY = "ext_proc does not get this chat request's body to judge: configure request_body_mode: BUFFERED"


def immediate(answer: Immediate) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=answer.status),  # type: ignore[arg-type]
            headers=mutation(answer.headers),
            body=answer.body,
            details=answer.details,
        )
    )


@dataclass
class _Stream:
    """One HTTP request's state across its messages."""

    check: Check | None = None  # None: not a chat request (everything continues untouched)
    headers: dict[str, str] = field(default_factory=dict)  # verdict headers for the client's response
    protocol: Any = None  # Envoy's ProtocolConfiguration, sent on the first message (Envoy >= 1.33)
    seen_headers: bool = False
    judged: bool = False  # a chat body was judged and let through


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        stream = _Stream()
        async for request in requests:
            if request.HasField("protocol_config"):
                stream.protocol = request.protocol_config
            reply = await self._one(stream, request)
            yield reply
            if reply.HasField("immediate_response"):
                return

    async def _one(self, stream: _Stream, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(stream, request.request_headers)
        if kind == "request_body":
            return await self._request_body(stream, request.request_body)
        if kind == "response_headers":
            if stream.check is not None and not stream.judged:  # the body never came to be judged
                return immediate(error_answer(stream.check.trace, Misconfigured(NO_BODY)))
            common = ep.CommonResponse(header_mutation=mutation(stream.headers)) if stream.headers else None
            return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common))
        if kind == "response_body":
            return ep.ProcessingResponse(response_body=ep.BodyResponse())
        if kind == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())

    def _request_headers(self, stream: _Stream, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        stream.seen_headers = True
        received = header_map(headers)
        found = self.gate.route(received, has_body=not headers.end_of_stream)
        if isinstance(found, Immediate):
            return immediate(found)
        if isinstance(found, Check):
            stream.check = found
            if headers.end_of_stream:
                return immediate(error_answer(found.trace, InvalidInput("a chat request needs a JSON body")))
            mode = stream.protocol.request_body_mode if stream.protocol is not None else BUFFERED
            if mode != BUFFERED:
                return immediate(error_answer(found.trace, Misconfigured(NO_BODY)))
        # The guard's headers are its own: a client's are removed before the upstream sees them.
        forged = ep.HeaderMutation(remove_headers=[n for n in received if n.startswith(GUARD_HEADERS)])
        removal = ep.CommonResponse(header_mutation=forged) if forged.remove_headers else None
        reply = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=removal))
        if stream.check is not None:
            reply.mode_override.request_body_mode = BUFFERED
        return reply

    async def _request_body(self, stream: _Stream, body: ep.HttpBody) -> ep.ProcessingResponse:
        check = stream.check
        if not stream.seen_headers:  # request_header_mode: SKIP; the route cannot be known
            reason = "ext_proc needs the request headers: configure request_header_mode: SEND"
            return immediate(error_answer(Trace.for_headers({}, "unrouted"), Misconfigured(reason)))
        if check is None:
            return ep.ProcessingResponse(request_body=ep.BodyResponse())
        if not body.end_of_stream:
            reason = "the body came in pieces: configure request_body_mode: BUFFERED for chat routes"
            return immediate(error_answer(check.trace, PayloadTooLarge(reason)))
        outcome: Outcome = await self.gate.check(check, body.body)
        if isinstance(outcome, Immediate):
            return immediate(outcome)
        assert isinstance(outcome, Continue)
        stream.headers, stream.judged = outcome.headers, True
        common = ep.CommonResponse(header_mutation=mutation(outcome.headers))
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
