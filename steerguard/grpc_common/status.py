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


# What a client raises for a status (the first class listed for it); anything else: UpstreamError.
_ERRORS: dict[grpc.StatusCode, type[errors.SteerguardError]] = {}
for _cls, _code in reversed(_CODES):
    _ERRORS[_code] = _cls
_ERRORS[grpc.StatusCode.UNAVAILABLE] = errors.UpstreamError  # unreachable or not yet loaded


def error_for(code: grpc.StatusCode, details: str | None) -> errors.SteerguardError:
    """The :mod:`steerguard.errors` class a client raises for a status; the service's reason kept."""
    return _ERRORS.get(code, errors.UpstreamError)(details or code.name.lower().replace("_", " "))
