"""Verdict cache: one contract, an in-process LRU and Redis behind it.

The classifier caches the probe's verdict for a normalised request under
``prefix:bundle_id:sha256(request)``; a recalibrated bundle gets a new
``bundle_id`` and so never reads an old verdict. Only verdict JSON is stored,
never the prompt. A cache failure is never a request failure: every backend
answers "miss" and swallows write errors, counting them.
"""

from __future__ import annotations

from classifier_service.cache.base import ErrorListener, VerdictCache
from classifier_service.cache.keys import verdict_key
from classifier_service.cache.memory import MemoryCache
from classifier_service.cache.redis_cache import RedisCache

__all__ = ["ErrorListener", "MemoryCache", "RedisCache", "VerdictCache", "make_cache", "verdict_key"]


def make_cache(
    redis_url: str | None,
    *,
    ttl_seconds: float,
    max_entries: int,
    redis_timeout_seconds: float = 0.05,
    redis_retry_seconds: float = 5.0,
    on_error: ErrorListener | None = None,
) -> VerdictCache:
    """Redis when a URL is given, else an in-process LRU of ``max_entries``."""
    if redis_url:
        return RedisCache(
            redis_url,
            ttl_seconds=ttl_seconds,
            timeout_seconds=redis_timeout_seconds,
            retry_after_seconds=redis_retry_seconds,
            on_error=on_error,
        )
    return MemoryCache(max_entries=max_entries, ttl_seconds=ttl_seconds)
