"""Every error the sidecar answers itself: one JSON shape, one status table.

The body is ``{"error": {"code": ..., "message": reason}}`` (OpenAI clients
read ``error.message``); reasons come from :mod:`steerguard.errors`, which
guarantees they hold no prompt text.
"""

from __future__ import annotations

import json

from aiohttp import web

from steerguard.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    SteerguardError,
    Unauthenticated,
    UpstreamError,
)


class UnsupportedMediaType(InvalidInput):
    """The request is not JSON (HTTP 415)."""


class RequestTimeout(InvalidInput):
    """The client sent its body too slowly (HTTP 408)."""


class NotFound(InvalidInput):
    """No route (only when the policy refuses unknown paths; HTTP 404)."""


class MethodNotAllowed(InvalidInput):
    """A chat route asked with a method it does not take (HTTP 405)."""


class UpstreamTimeout(UpstreamError):
    """The chatbot did not answer in time (HTTP 504)."""


class ClassifierUnavailable(SteerguardError):
    """Fail-closed refusal when the classifier cannot judge (HTTP 503)."""


class ClassifierOverloaded(ClassifierUnavailable):
    """Fail-closed refusal while the classifier sheds load (HTTP 503, ``classifier_overloaded``)."""


class ClassifierDeadline(ClassifierUnavailable):
    """Fail-closed refusal when the verdict did not come within the deadline (HTTP 504)."""


def classifier_failure(kind: str, reason: str) -> ClassifierUnavailable:
    """The fail-closed error for a failure kind (sidecar.policy.FAILURE_KINDS)."""
    cls = {"overloaded": ClassifierOverloaded, "deadline": ClassifierDeadline}.get(
        kind, ClassifierUnavailable
    )
    return cls(reason)


class Misconfigured(SteerguardError):
    """The front end is set up so that a chat request cannot be judged (HTTP 500): refused, not passed."""


class BundleMismatch(SteerguardError):
    """The classifier and the steer service serve different bundles, and the sidecar refuses (HTTP 503)."""


# Most specific first.
_TABLE: list[tuple[type[SteerguardError], int, str]] = [
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (RequestTimeout, 408, "request_timeout"),
    (NotFound, 404, "not_found"),
    (MethodNotAllowed, 405, "method_not_allowed"),
    (InvalidInput, 400, "invalid_request"),
    (Unauthenticated, 401, "unauthenticated"),
    (Overloaded, 429, "overloaded"),
    (NotReady, 503, "not_ready"),
    (ClassifierOverloaded, 503, "classifier_overloaded"),
    (ClassifierDeadline, 504, "classifier_deadline"),
    (ClassifierUnavailable, 503, "classifier_unavailable"),
    (BundleMismatch, 503, "bundle_mismatch"),
    (UpstreamTimeout, 504, "upstream_timeout"),
    (DeadlineExceeded, 504, "deadline_exceeded"),
    (UpstreamError, 502, "upstream_error"),
    (Misconfigured, 500, "guard_misconfigured"),
]


def status_of(error: SteerguardError) -> tuple[int, str]:
    """HTTP status and machine-readable code of an error."""
    for cls, status, code in _TABLE:
        if isinstance(error, cls):
            return status, code
    return 500, "internal_error"


def error_response(error: SteerguardError, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error response for ``error``."""
    status, code = status_of(error)
    body = json.dumps({"error": {"code": code, "message": error.reason}}).encode()
    out_headers = {"x-steerguard-error": code}
    if headers:
        out_headers.update(headers)
    return web.Response(status=status, body=body, content_type="application/json", headers=out_headers)
