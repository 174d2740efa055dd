"""Server interceptors: error mapping and bearer-token auth.

Servicers raise :class:`steerguard.errors.SteerguardError`; this is the one
place those become status codes. Anything else is logged with its stack trace
on the server and returned as ``INTERNAL`` with a generic message, so a client
never sees internals.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Any

import grpc

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


class AuthInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every RPC but health and reflection."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

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
        given_b = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_b, self._expected):
            return handler
        return self._deny(handler)
