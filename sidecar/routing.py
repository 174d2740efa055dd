"""Which route a request is for, decided on one normal form of its path.

An upstream's HTTP stack may read ``/v1//chat/completions``,
``/v1/./chat/completions``, ``/V1/chat/completions``, ``/v1/chat/completions/``,
``/v1/chat/completions%2f`` or ``/v1/chat/completions;x`` as its chat route. So
the sidecar matches routes on a normal form (percent-decoded, matrix
parameters and dot segments resolved, repeated and trailing slashes dropped,
lower case): every spelling of a chat path is judged, while the upstream
still receives the request exactly as the client sent it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from sidecar.adapters import adapter_for
from sidecar.adapters.base import Adapter
from sidecar.http_errors import NotFound, UnsupportedMediaType
from sidecar.policy import Policy, PolicyError, Route

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def canonical_path(raw_path: str) -> str:
    """The normal form of a request path (the query string is not part of it)."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):  # %252f -> %2f -> /
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for raw in path.replace("\\", "/").split("/"):
        segment = raw.split(";", 1)[0].strip(" \t\r\n\x00\x0b\x0c").lower()
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


@dataclass(frozen=True)
class Match:
    route: Route
    adapter: Adapter


class Router:
    """Chat routes by the normal form of their path."""

    def __init__(self, policy: Policy) -> None:
        self._routes: dict[str, Match] = {}
        for route in policy.routes:
            key = canonical_path(route.path)
            if key in self._routes and self._routes[key].route is not route:
                raise PolicyError(f"policy.routes: {route.path} is the same path as another route")
            self._routes[key] = Match(route, adapter_for(route))

    def match(self, raw_path: str) -> Match | None:
        return self._routes.get(canonical_path(raw_path))


def refuse_unknown(policy: Policy, method: str, has_body: bool) -> NotFound | None:
    """Why the policy's ``unknown_paths`` refuses a request for a path no route names; None to relay it.

    One rule for the sidecar and the ext_proc front end: a write to an unnamed
    path is refused by default, since text it carries would pass unjudged.
    """
    mode = policy.unknown_paths
    if mode == "forward":
        return None
    if mode == "reject":
        return NotFound("no such route (policy unknown_paths: reject)")
    if method.upper() in SAFE_METHODS and not has_body:
        return None
    return NotFound(
        f"no route takes {method} on this path; only GET, HEAD and OPTIONS without a body are "
        "relayed to paths the policy does not name (set unknown_paths: forward in the policy to relay it)"
    )


def refuse_coding(
    values: Iterable[str], decoded: str | None, *, accepted: str
) -> UnsupportedMediaType | None:
    """Why a chat body's content coding keeps it from being judged; None when it can be.

    ``values`` are the request's Content-Encoding headers; ``decoded`` the one
    coding undone before the body was read (None: none). A body is judged as
    read, so any other coding would let the guard judge other bytes than an
    upstream that undoes it reads. ``accepted`` says what the client may send.
    """
    codings = [t.strip().lower() for value in values for t in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings or codings == [decoded]:
        return None
    return UnsupportedMediaType(f"content encoding {', '.join(codings)} cannot be judged ({accepted})")
