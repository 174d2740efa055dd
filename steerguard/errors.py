"""One exception hierarchy for the whole project.

Every error a client may cause or see carries a ``reason`` that is safe to
return over the wire (no prompt text, no stack trace). The gRPC interceptor and
the HTTP sidecar map these classes to status codes in one place; anything that
is not a :class:`SteerguardError` becomes a generic internal error.
"""

from __future__ import annotations


class SteerguardError(Exception):
    """Base class. ``reason`` is what a client is told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(SteerguardError):
    """The request is malformed or violates a limit (gRPC INVALID_ARGUMENT, HTTP 400)."""


class PayloadTooLarge(InvalidInput):
    """The request exceeds a size limit (gRPC INVALID_ARGUMENT, HTTP 413)."""


class TooLong(InvalidInput):
    """The input is longer than the hard cap a service judges (gRPC OUT_OF_RANGE, HTTP 413).

    Apart from other invalid input because a guard may choose to let it through
    (the sidecar's ``on_oversize``); malformed input never is.
    """


class Unauthenticated(SteerguardError):
    """Missing or wrong credentials (gRPC UNAUTHENTICATED, HTTP 401)."""


class NotReady(SteerguardError):
    """The service is loading or shutting down (gRPC UNAVAILABLE, HTTP 503)."""


class Overloaded(SteerguardError):
    """A queue is full (gRPC RESOURCE_EXHAUSTED, HTTP 429)."""


class DeadlineExceeded(SteerguardError):
    """The client's deadline passed or it went away first (gRPC DEADLINE_EXCEEDED, HTTP 504)."""


class UpstreamError(SteerguardError):
    """A dependency (classifier, steer service, chatbot) failed (gRPC UNAVAILABLE, HTTP 502)."""


class BundleError(SteerguardError):
    """A calibration bundle is missing, corrupt, or made for another model."""


class ModelError(SteerguardError):
    """The model cannot be found or loaded."""


class DataError(SteerguardError):
    """A data file is malformed; the reason names the file and line."""
