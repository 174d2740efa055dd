"""Redis verdict cache that degrades to "no cache" instead of failing requests.

Every call has a short socket timeout (a slow Redis costs at most that much
per request) and no client-side retries. After a failure the cache is
*bypassed* for ``retry_after_seconds`` (a circuit breaker): requests are
answered uncached without touching Redis, and the first call after the
cooldown tries Redis again, so the service uses Redis again once it is back.
Each failure is counted and reported to ``on_error``; the transition to
"down" and back to "up" is logged once each, not per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from classifier_service.cache.base import (
    ErrorListener,
    VerdictCache,
    as_cached,
    decode_verdict,
    encode_verdict,
)
from steerguard.logs import get_logger
from steerguard.verdict import Verdict

log = get_logger("classifier_service.cache")

# What a network or server problem looks like from redis-py (a cluster it cannot map raises
# RedisClusterException, which is not a RedisError).
BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)


SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def connect(url: str, timeout_seconds: float, max_connections: int) -> tuple[Any, str]:
    """A client for ``url`` and where it points (never its password), for the log.

    ``redis://`` and ``rediss://`` (TLS; ``?ssl_ca_certs=...`` and the other
    redis-py URL options apply) are redis-py's own. ``redis+sentinel://[:PASSWORD@]
    HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` asks those Sentinels for the
    master of SERVICE and follows it across failovers (redis-py's
    ``Sentinel.master_for``). ``redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]``
    (``rediss+cluster`` with TLS) is a Redis Cluster reached from those
    startup nodes (redis-py's ``RedisCluster``): keys spread over its slots,
    and a request's keys are read per node (``mget_nonatomic``). Every call has the socket timeout and no
    client retries: a failure opens the circuit breaker instead.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "max_connections": max_connections,
    }
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return _cluster(parts, options)
    if parts.scheme != SENTINEL_SCHEME:
        client = redis.Redis.from_url(url, **options)
        kwargs = client.connection_pool.connection_kwargs
        return client, f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels = [
        (h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]) if ":" in h else 26379) for h in hosts.split(",")
    ]
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL needs the monitored service's name: .../SERVICE[/DB]")
    db = int(path[1]) if len(path) > 1 else 0
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **timeouts)
    master = sentinel.master_for(
        path[0], db=db, password=unquote(parts.password) if parts.password else None, **options
    )
    return master, f"sentinel {path[0]} via {hosts}"


def _cluster(parts: Any, options: dict[str, Any]) -> tuple[RedisCluster, str]:
    hosts = parts.netloc.rsplit("@", 1)[-1]
    nodes = [
        ClusterNode(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]) if ":" in h else 6379)
        for h in hosts.split(",")
    ]
    client = RedisCluster(
        startup_nodes=nodes,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme.startswith("rediss"),
        **options,
    )
    return client, f"cluster via {hosts}"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host else (text, 26379)  # Sentinel's default port


class RedisCache(VerdictCache):
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float,
        timeout_seconds: float = 0.05,
        retry_after_seconds: float = 5.0,
        on_error: ErrorListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_connections: int = 64,
    ) -> None:
        super().__init__(ttl_seconds, on_error)
        self.retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None  # None: Redis is believed up
        self._ttl_ms = max(1, int(round(ttl_seconds * 1000)))
        self._connect = lambda: connect(url, timeout_seconds, max_connections)
        self.where = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self._client: Any = None
        # A cluster client maps the slots as it is made, so it fails while the cluster is down:
        # made on the first call that finds Redis reachable, under the circuit breaker.
        self._call("connect", self._ensure)

    def _ensure(self) -> Any:
        if self._client is None:
            self._client, self.where = self._connect()
        return self._client

    @property
    def client(self) -> Any:
        """The redis-py client (None until Redis was first reachable)."""
        return self._client

    @property
    def available(self) -> bool:
        """False while the circuit is open (Redis failed less than ``retry_after_seconds`` ago)."""
        with self._lock:
            return self._down_until is None or self._clock() >= self._down_until

    def _call(self, op: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn`` unless the circuit is open; (ok, result)."""
        with self._lock:
            was_down = self._down_until is not None
            if was_down and self._clock() < self._down_until:  # type: ignore[operator]
                return False, None
        try:
            result = fn()
        except BACKEND_ERRORS as exc:
            with self._lock:
                first = self._down_until is None
                self._down_until = self._clock() + self.retry_after_seconds
            self._failed(op)
            if first:
                log.warning(
                    "redis unavailable: answering uncached",
                    redis=self.where,
                    op=op,
                    error=type(exc).__name__,
                    retry_after_seconds=self.retry_after_seconds,
                )
            return False, None
        if was_down:
            with self._lock:
                recovered = self._down_until is not None
                self._down_until = None
            if recovered:
                log.info("redis is back: caching again", redis=self.where)
        return True, result

    def get_many(self, keys: Sequence[str]) -> list[Verdict | None]:
        if not keys:
            return []

        def read() -> Any:
            client = self._ensure()
            fetch = client.mget_nonatomic if isinstance(client, RedisCluster) else client.mget
            return fetch(list(keys))

        ok, raw = self._call("get", read)
        if not ok:
            return [None] * len(keys)
        out: list[Verdict | None] = []
        for value in raw:
            if value is None:
                out.append(None)
                continue
            try:
                out.append(as_cached(decode_verdict(value)))
            except ValueError:
                self._failed("decode")
                out.append(None)
        return out

    def set_many(self, items: Mapping[str, Verdict]) -> None:
        if not items:
            return

        def write() -> None:
            pipe = self._ensure().pipeline(transaction=False)
            for key, verdict in items.items():
                pipe.set(key, encode_verdict(verdict), px=self._ttl_ms)
            pipe.execute()

        self._call("set", write)

    def close(self) -> None:
        client = self._client
        if client is None:
            return
        client.close()
        if not isinstance(client, RedisCluster):  # a cluster client closes its nodes' pools itself
            client.connection_pool.disconnect()
