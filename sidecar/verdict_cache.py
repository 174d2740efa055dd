"""A small in-process verdict cache in front of the classifier call.

The classifier has its own (Redis) cache, but reaching it still costs a gRPC
round trip; for a conversation the sidecar has just judged (client retries,
repeated system prompts, health-check traffic, hot duplicates) that round
trip is most of the sidecar's added latency. Entries live briefly (default
30 s) so a new bundle's verdicts take over quickly, the size is bounded
(LRU), and only successful verdicts are kept: an outage is never cached.
Keys are digests; no text is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence

from sidecar.conversation import Message
from steerguard.v1 import common_pb2


def cache_key(messages: Sequence[Message], threshold: float | None) -> bytes:
    """sha256 of the exact conversation and threshold the classifier would see."""
    canon = json.dumps([[m.role, m.content] for m in messages] + [threshold], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).digest()


class VerdictCache:
    """Bounded LRU with a time-to-live; ``max_entries == 0`` or ``ttl_s <= 0`` disables it."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max = max_entries if ttl_s > 0 else 0
        self._ttl = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, common_pb2.Verdict]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> common_pb2.Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: bytes, verdict: common_pb2.Verdict) -> None:
        if not self._max:
            return
        self._entries[key] = (time.monotonic() + self._ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
