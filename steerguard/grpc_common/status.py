"""The one mapping from :mod:`steerguard.errors` to gRPC status codes."""

from __future__ import annotations

import grpc

from steerguard import errors

_CODES: list[tuple[type[errors.SteerguardError], grpc.StatusCode]] = [
    (errors.TooLong, grpc.StatusCode.OUT_OF_RANGE),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.UpstreamError, grpc.StatusCode.UNAVAILABLE),
    (errors.BundleError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ModelError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_for(exc: errors.SteerguardError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
