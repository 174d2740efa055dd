"""A client that speaks Envoy's ext_proc protocol the way Envoy's HTTP filter does (no Envoy can run here).

Per Envoy's ext_proc documentation, with the processing mode steerguard's
example configurations set (request headers SEND, request body BUFFERED,
response headers SEND, response body NONE, trailers SKIP; :class:`Mode`
sets others, and whether the first message names the body modes in
``protocol_config``, as Envoy 1.33 and later do): one
bidirectional ``Process`` stream per HTTP request; Envoy sends the request
headers (pseudo-headers ``:method``, ``:path``, ``:authority``, values in
``raw_value``), waits for the ``HeadersResponse``, sends the whole body in one
``HttpBody`` with ``end_of_stream`` set, waits for the ``BodyResponse``, and
once the upstream answered sends its response headers. An
``ImmediateResponse`` at any point ends the exchange: Envoy answers the
client with it and sends nothing more. Header mutations are applied to the
request (toward the upstream) or to the response (toward the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc


@dataclass
class Exchange:
    """What Envoy would do with one HTTP request: forward it (with these headers) or answer it."""

    forwarded: bool = False
    request_headers: dict[str, str] = field(default_factory=dict)  # as sent upstream
    response_headers: dict[str, str] = field(default_factory=dict)  # as sent to the client
    status: int = 0  # of an ImmediateResponse
    body: bytes = b""  # of an ImmediateResponse
    details: str = ""
    mode_override: processing_mode_pb2.ProcessingMode | None = None  # what the server asked of the filter


BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED


@dataclass(frozen=True)
class Mode:
    """The filter's processing mode, as far as the request goes (``ProcessingMode`` names).

    ``protocol_config``: whether Envoy names its body modes on the first message (Envoy 1.33
    and later do). Headers ``SKIP`` sends no request headers; body ``NONE`` sends no body.
    """

    request_header_mode: str = "SEND"
    request_body_mode: str = "BUFFERED"
    protocol_config: bool = True

    def steps(self, request: dict[str, str], body: bytes | None) -> list[ep.ProcessingRequest]:
        """The request-side messages Envoy sends, in order."""
        steps: list[ep.ProcessingRequest] = []
        if self.request_header_mode == "SEND":
            steps.append(ep.ProcessingRequest(request_headers=_headers(request, body is None)))
        if body is not None and self.request_body_mode != "NONE":
            steps.append(ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)))
        if self.protocol_config and steps:
            modes = processing_mode_pb2.ProcessingMode.BodySendMode
            steps[0].protocol_config.request_body_mode = modes.Value(self.request_body_mode)
        return steps


def _headers(values: dict[str, str], end_of_stream: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        ),
        end_of_stream=end_of_stream,
    )


def _apply(target: dict[str, str], mutation: ep.HeaderMutation) -> None:
    for option in mutation.set_headers:
        h = option.header
        target[h.key.lower()] = h.raw_value.decode() if h.raw_value else h.value
    for name in mutation.remove_headers:
        target.pop(name.lower(), None)


async def send(
    address: str,
    method: str,
    path: str,
    body: bytes | None,
    *,
    headers: dict[str, str] | None = None,
    upstream_status: int = 200,
    timeout: float = 30.0,
    mode: Mode | None = None,
) -> Exchange:
    """Run one HTTP request through the ext_proc server at ``address`` as Envoy would, with the
    filter's processing ``mode`` (by default the one steerguard's example configurations set)."""
    mode = mode or Mode()
    request = {":method": method, ":path": path, ":authority": "chat.example", ":scheme": "http"}
    request.update({"content-type": "application/json", **(headers or {})})
    out = Exchange(request_headers=dict(request))
    queue: asyncio.Queue[ep.ProcessingRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[ep.ProcessingRequest]:
        while (item := await queue.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(address) as channel:
        call = ep_grpc.ExternalProcessorStub(channel).Process(outgoing(), timeout=timeout)
        replies = call.__aiter__()
        steps = mode.steps(request, body)
        status = {":status": str(upstream_status), "content-type": "application/json"}
        steps.append(ep.ProcessingRequest(response_headers=_headers(status, False)))
        for step in steps:
            await queue.put(step)
            reply: ep.ProcessingResponse = await replies.__anext__()
            if reply.HasField("immediate_response"):
                answer = reply.immediate_response
                out.status, out.body, out.details = (
                    int(answer.status.code),
                    bytes(answer.body),
                    answer.details,
                )
                _apply(out.response_headers, answer.headers)
                await queue.put(None)
                return out
            kind = step.WhichOneof("request")
            if reply.WhichOneof("response") != kind:
                raise RuntimeError(f"ext_proc answered {reply.WhichOneof('response')} to {kind}")
            common = getattr(reply, kind).response
            target = out.response_headers if kind == "response_headers" else out.request_headers
            _apply(target, common.header_mutation)
            if kind == "request_headers" and reply.HasField("mode_override"):
                out.mode_override = reply.mode_override
        out.forwarded = True
        out.response_headers = {**status, **out.response_headers}
        await queue.put(None)
    return out
