"""Server interceptors: error mapping and bearer-token auth.

Servicers raise :class:`steerguard.errors.SteerguardError`; this is the one
place those become status codes. Anything else is logged with its stack trace
on the server and returned as ``INTERNAL`` with a generic message, so a client
never sees internals.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter

from steerguard import errors
from steerguard.grpc_common.status import status_for
from steerguard.logs import get_logger

log = get_logger("steerguard.grpc")

# Health checks and reflection stay open: kubelet probes carry no token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.SteerguardError):
        context.abort(status_for(exc), exc.reason)
    log.error("unhandled error", method=method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _wrap_unary(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except Exception as exc:
            if context.code() is not None and not isinstance(exc, errors.SteerguardError):
                raise  # already aborted by grpc itself
            _abort(context, exc, method)

    return handler


def _wrap_stream(fn: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request, context)
        except Exception as exc:
            if context.code() is not None and not isinstance(exc, errors.SteerguardError):
                raise
            _abort(context, exc, method)

    return handler


def _rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], str], Callable[..., Any]], method: str
) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, method), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, method), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream, method), handler.request_deserializer, handler.response_serializer
        )
    return handler  # client-streaming RPCs with one reply are not used by steerguard


class ErrorInterceptor(grpc.ServerInterceptor):
    """Map steerguard errors to status codes; hide everything else behind INTERNAL."""

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_stream or handler.stream_stream:
            return _rewrap(handler, _wrap_stream, method)
        return _rewrap(handler, _wrap_unary, method)


_NAMED = re.compile(r"^([a-z][a-z0-9_-]{0,62}):(\S+)$")
CALLS = Counter(
    "steerguard_grpc_calls_total",
    "authenticated RPCs by caller (the token's name) and method",
    ["caller", "method"],
)


def parse_tokens(text: str) -> dict[bytes, str]:
    """``{expected authorization header: caller name}`` from a token or a token file's text.

    A file whose every line is ``NAME:TOKEN`` gives each caller its own
    credential (and its own series in ``steerguard_grpc_calls_total``);
    anything else is one token, named ``default``.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [_NAMED.match(line) for line in lines]
    if lines and all(named):
        return {f"Bearer {m.group(2)}".encode(): m.group(1) for m in named if m}
    return {f"Bearer {text.strip()}".encode(): "default"}


class AuthInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every RPC but health and reflection."""

    def __init__(self, tokens: str) -> None:
        self._expected = parse_tokens(tokens)

    def caller(self, given: bytes) -> str | None:
        """The caller a header belongs to; every token is compared, in constant time each."""
        found = None
        for expected, name in self._expected.items():
            if hmac.compare_digest(given, expected):
                found = name
        return found

    def _deny(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            deny, handler.request_deserializer, handler.response_serializer
        )

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        caller = self.caller(given.encode() if isinstance(given, str) else bytes(given))
        if caller is None:
            return self._deny(handler)
        CALLS.labels(caller=caller, method=details.method).inc()
        return handler
