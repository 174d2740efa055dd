"""A client that speaks Envoy's ext_proc protocol the way Envoy's HTTP filter does (no Envoy can run here).

Per Envoy's ext_proc documentation, with the processing mode steerguard's
example configurations set (request headers SEND, request body BUFFERED,
response headers SEND, response body NONE, trailers SKIP): one
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
) -> Exchange:
    """Run one HTTP request through the ext_proc server at ``address`` as Envoy would."""
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
        steps: list[ep.ProcessingRequest] = [
            ep.ProcessingRequest(request_headers=_headers(request, body is None))
        ]
        if body is not None:
            steps.append(ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)))
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
        out.forwarded = True
        out.response_headers = {**status, **out.response_headers}
        await queue.put(None)
    return out
