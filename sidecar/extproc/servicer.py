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
rather than judged in pieces or let through unjudged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2

from sidecar.extproc.gate import Check, Continue, Gate, Immediate, Outcome, error_answer
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


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        stream = _Stream()
        async for request in requests:
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
            common = ep.CommonResponse(header_mutation=mutation(stream.headers)) if stream.headers else None
            return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common))
        if kind == "response_body":
            return ep.ProcessingResponse(response_body=ep.BodyResponse())
        if kind == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())

    def _request_headers(self, stream: _Stream, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        received = header_map(headers)
        found = self.gate.route(received, has_body=not headers.end_of_stream)
        if isinstance(found, Immediate):
            return immediate(found)
        if isinstance(found, Check):
            stream.check = found
            if headers.end_of_stream:
                return immediate(error_answer(found.trace, InvalidInput("a chat request needs a JSON body")))
        # The guard's headers are its own: a client's are removed before the upstream sees them.
        forged = [name for name in received if name.startswith(GUARD_HEADERS)]
        removal = ep.CommonResponse(header_mutation=ep.HeaderMutation(remove_headers=forged))
        return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=removal if forged else None))

    async def _request_body(self, stream: _Stream, body: ep.HttpBody) -> ep.ProcessingResponse:
        check = stream.check
        if check is None:
            return ep.ProcessingResponse(request_body=ep.BodyResponse())
        if not body.end_of_stream:
            reason = "the body came in pieces: configure request_body_mode: BUFFERED for chat routes"
            return immediate(error_answer(check.trace, PayloadTooLarge(reason)))
        outcome: Outcome = await self.gate.check(check, body.body)
        if isinstance(outcome, Immediate):
            return immediate(outcome)
        assert isinstance(outcome, Continue)
        stream.headers = outcome.headers
        common = ep.CommonResponse(header_mutation=mutation(outcome.headers))
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
