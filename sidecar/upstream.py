"""Forwarding to the chatbot over a keep-alive connection pool.

Requests go out with the client's headers and body unchanged, except the
hop-by-hop headers HTTP says a proxy must not forward and ``Host`` (set to the
upstream's, as nginx does). aiohttp's automatic headers and response
decompression are turned off so nothing is added and compressed bodies stream
through as they are. Responses are streamed chunk by chunk, never buffered,
unless the response check must read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict
from yarl import URL

from sidecar.compat import deadline
from sidecar.http_errors import UpstreamTimeout
from steerguard.errors import UpstreamError

# RFC 9110 7.6.1 hop-by-hop headers, plus Host (rewritten) and Expect (handled per hop).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)
# Every header the guard sets starts so; a client's own are removed before the upstream sees them.
GUARD_HEADERS = "x-steerguard-"
# Headers aiohttp's client would add on its own when the client did not send them.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def raw_header_items(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The client's headers as sent: names in their own case, order and duplicates kept."""
    return [
        (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for k, v in request.raw_headers
    ]


def request_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones (order and duplicates kept)."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items)
    return CIMultiDict((k, v) for k, v in items if k.lower() not in drop)


# Content codings aiohttp's server undoes before a handler reads the body: those named by the
# first Content-Encoding header alone (aiohttp.http_parser; br and zstd where their libraries
# are installed, else aiohttp answers 400 itself).
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def body_decoded(request: web.BaseRequest) -> str | None:
    """The coding aiohttp undid before this process reads the body (the body is not the bytes the
    client sent but their decoding); None when it undid none."""
    first = request.headers.get("Content-Encoding", "")
    return first.lower() if first.isascii() and first.lower() in DECODED_CODINGS else None


def forwarded_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The headers a request goes upstream with: the client's (:func:`request_headers`), but
    where aiohttp decoded the body, without its coding and length, since the decoded body is
    what goes upstream and what the guard judged."""
    headers = request_headers(raw_header_items(request))
    for name in [k for k in headers if k.lower().startswith(GUARD_HEADERS)]:
        headers.popall(name, None)  # the guard's headers are its own, never a client's
    if body_decoded(request) is not None:
        headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
    return headers


def response_headers(headers: Iterable[tuple[str, str]], *, keep_length: bool) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop ones (and Content-Length when the body changes)."""
    items = list(headers)
    drop = (HOP_BY_HOP - {"host"}) | _connection_tokens(items)
    if not keep_length:
        drop = drop | {"content-length"}
    return CIMultiDict((k, v) for k, v in items if k.lower() not in drop)


@dataclass(frozen=True)
class UpstreamSettings:
    """Pool and timeouts toward the chatbot."""

    base_url: str
    connect_timeout_s: float = 5.0
    headers_timeout_s: float = 120.0
    read_timeout_s: float = 60.0
    pool_size: int = 512


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


class _QuickAckResponseHandler(ResponseHandler):
    """Acknowledges each piece of a response at once.

    Many HTTP servers (Python's ``http.server`` among them) write a response's
    headers and body in two writes without ``TCP_NODELAY``: Nagle's algorithm
    holds the body until the headers are acknowledged, and on a kept-alive
    connection the kernel delays that acknowledgement by 40 ms. The sidecar's
    chat route paid those 40 ms on every request. Setting ``TCP_QUICKACK`` as
    data arrives sends the pending acknowledgement now (it is not a lasting
    mode, hence per receive), so the body follows at once.
    """

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):  # not TCP (a Unix socket), or closing
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        super().data_received(data)


class Upstream:
    """One aiohttp session (connection pool) for the process's lifetime."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        base = URL(settings.base_url)
        self._origin = base.origin()
        self._prefix = base.raw_path.rstrip("/")
        connector = aiohttp.TCPConnector(
            limit=settings.pool_size,
            limit_per_host=settings.pool_size,
            keepalive_timeout=30,
            ttl_dns_cache=30,
        )
        # aiohttp has no public hook for the protocol; its factory is the one place to put it.
        connector._factory = functools.partial(  # type: ignore[assignment]
            _QuickAckResponseHandler, loop=connector._loop
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.connect_timeout_s + settings.headers_timeout_s,
                sock_connect=settings.connect_timeout_s,
                sock_read=settings.read_timeout_s,
            ),
            skip_auto_headers=(),
        )

    def url_for(self, raw_path_qs: str) -> URL:
        """The upstream URL for a request's raw (still percent-encoded) path and query."""
        return URL(str(self._origin) + self._prefix + raw_path_qs, encoded=True)

    async def send(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for the response headers (bounded)."""
        skip = tuple(h for h in _AUTO_HEADERS if h not in headers)
        try:
            async with deadline(self._settings.headers_timeout_s):
                return await self._session.request(
                    method,
                    self.url_for(raw_path_qs),
                    headers=headers,
                    data=body,
                    skip_auto_headers=skip,
                    allow_redirects=False,
                )
        except asyncio.TimeoutError:
            raise UpstreamTimeout("chatbot did not answer in time") from None
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout("chatbot did not answer in time") from None
        except aiohttp.ClientError:
            raise UpstreamError("chatbot unreachable") from None

    async def close(self) -> None:
        await self._session.close()


class _HeadersWithBody(web.StreamResponse):
    """A streamed response whose headers wait for the first body bytes (as ``web.Response`` does).

    Saves one socket write per forwarded request: on a busy machine a write
    costs about as much as the rest of the proxy's work on a small answer.
    """

    _send_headers_immediately = False


async def stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse, extra_headers: dict[str, str]
) -> tuple[web.StreamResponse, str | None]:
    """Relay the upstream's status, headers and body chunk by chunk.

    Returns the response and, when relaying failed after the headers went out,
    what failed (``upstream`` or ``client``). Such a failure cannot become an
    error status any more; the client connection is closed instead, so the
    client sees a truncated body rather than a clean-looking one.
    """
    # A fixed-length body goes out with its headers in one write; streams send headers at once.
    response_class = _HeadersWithBody if upstream.content_length is not None else web.StreamResponse
    response = response_class(status=upstream.status, reason=upstream.reason)
    response.headers.extend(response_headers(upstream.headers.items(), keep_length=True))
    response.headers.update(extra_headers)
    failed: str | None = None
    try:
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed = "upstream"
                break
            if not chunk:
                await response.write_eof()
                break
            await response.write(chunk)
    except ConnectionResetError:  # the client went away (aiohttp's reset error subclasses it)
        failed = "client"
    finally:
        if failed is None:
            upstream.release()
        else:
            upstream.close()
            if request.transport is not None:
                request.transport.close()
    return response, failed
