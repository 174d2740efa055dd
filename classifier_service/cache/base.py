"""The verdict-cache contract shared by the in-process and Redis caches.

Contract (checked by ``tests/test_cache_contract.py`` against every backend):

- ``get_many(keys)`` returns one entry per key, in order: the stored verdict
  with ``cached=True``, or ``None`` for a miss, an expired entry, or any
  backend failure;
- ``set_many({key: verdict})`` stores verdicts for ``ttl_seconds``; a failure
  is swallowed (counted in ``errors`` and reported to ``on_error``);
- neither ever raises because of the backend, and both are thread-safe.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from steerguard.verdict import Verdict

# Called with the operation ("get" or "set") each time a backend call fails.
ErrorListener = Callable[[str], None]


def encode_verdict(verdict: Verdict) -> bytes:
    """Verdict JSON: scores, category, threshold, bundle id. Never the request."""
    return json.dumps(verdict.as_dict(), separators=(",", ":"), sort_keys=True).encode()


def decode_verdict(raw: bytes | str) -> Verdict:
    """Inverse of :func:`encode_verdict`; raises ``ValueError`` on a corrupt value."""
    try:
        return Verdict.from_dict(json.loads(raw))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt cached verdict: {exc}") from exc


def as_cached(verdict: Verdict) -> Verdict:
    return verdict if verdict.cached else replace(verdict, cached=True)


class VerdictCache(abc.ABC):
    """Verdicts by key, with a TTL; see the module docstring for the contract."""

    backend: str = "base"

    def __init__(self, ttl_seconds: float, on_error: ErrorListener | None = None) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.ttl_seconds = float(ttl_seconds)
        self.on_error = on_error
        self.errors = 0

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[Verdict | None]:
        """One verdict (``cached=True``) or ``None`` per key, in order."""

    @abc.abstractmethod
    def set_many(self, items: Mapping[str, Verdict]) -> None:
        """Store every verdict for ``ttl_seconds``."""

    def get(self, key: str) -> Verdict | None:
        return self.get_many([key])[0]

    def set(self, key: str, verdict: Verdict) -> None:
        self.set_many({key: verdict})

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds connections
        """Release connections (the cache may not be used afterwards)."""

    def _failed(self, op: str) -> None:
        self.errors += 1
        if self.on_error is not None:
            self.on_error(op)
