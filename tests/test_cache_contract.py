"""One verdict-cache contract, run against the in-process LRU and real Redis (plain, Sentinel, Cluster).

Redis is a ``redis-server`` these tests start on a free port (falling back to
the machine's on 6379), so the outage tests can stop it without touching the
machine's. Backend-specific behaviour (LRU eviction, Redis down and back)
follows the contract suite.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from classifier_service.cache import MemoryCache, RedisCache, VerdictCache, make_cache, verdict_key
from devstack.net import free_port
from devstack.redis import ClusterSetup, RedisProcess, SentinelSetup, ping
from steerguard.verdict import Verdict

MACHINE_REDIS = "redis://127.0.0.1:6379/0"
DIGEST = "ab" * 32
SECRET_PROMPT = "how do I pick the lock on my neighbour's door"


def verdict(score: float = 0.9, bundle: str = "sg-test") -> Verdict:
    unsafe = score >= 0.5
    return Verdict(
        score=score,
        unsafe=unsafe,
        category="cybercrime" if unsafe else "",
        category_scores={"cybercrime": 0.75, "violence": 0.25},
        threshold=0.5,
        bundle_id=bundle,
        category_unsure=True,  # kept through the cache
    )


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        proc = RedisProcess().start()
    except (FileNotFoundError, RuntimeError):
        if not ping(MACHINE_REDIS):
            pytest.skip("no redis-server binary and no Redis on 127.0.0.1:6379")
        yield MACHINE_REDIS
        return
    try:
        yield proc.url
    finally:
        proc.close()


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master, a replica and a Sentinel (managed Redis in miniature): the contract holds there too."""
    try:
        setup = SentinelSetup(tmp_path_factory.mktemp("sentinel")).start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"cannot start redis with a sentinel: {exc}")
    yield setup.url
    setup.stop()


@pytest.fixture(scope="module")
def cluster_url(redis_cluster: ClusterSetup) -> str:
    """Three cluster masters: keys of one call spread over nodes."""
    return redis_cluster.url


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
def cache(request: pytest.FixtureRequest) -> Iterator[VerdictCache]:
    if request.param == "memory":
        yield MemoryCache(max_entries=100, ttl_seconds=60)
        return
    url = request.getfixturevalue(f"{request.param}_url")
    c = RedisCache(url, ttl_seconds=60, timeout_seconds=1.0)
    yield c
    c.close()


def key(n: int | str = 0) -> str:
    """A fresh key per test run (the machine's Redis may hold older ones)."""
    return verdict_key(f"test-{uuid.uuid4().hex[:8]}", "sg-test", f"{n:064x}" if isinstance(n, int) else n)


# --- the contract ----------------------------------------------------------------


def test_miss_is_none(cache: VerdictCache) -> None:
    assert cache.get(key()) is None
    assert cache.get_many([]) == []


def test_round_trip_marks_cached(cache: VerdictCache) -> None:
    k, v = key(), verdict()
    cache.set(k, v)
    got = cache.get(k)
    assert got is not None and got.cached
    assert got.as_dict() == v.as_dict()


def test_get_many_keeps_order_with_gaps(cache: VerdictCache) -> None:
    ks = [key(i) for i in range(4)]
    cache.set_many({ks[1]: verdict(0.1), ks[3]: verdict(0.7)})
    got = cache.get_many(ks)
    assert [g.score if g else None for g in got] == [None, pytest.approx(0.1), None, pytest.approx(0.7)]


def test_overwrite_replaces(cache: VerdictCache) -> None:
    k = key()
    cache.set(k, verdict(0.2))
    cache.set(k, verdict(0.8))
    got = cache.get(k)
    assert got is not None and got.score == pytest.approx(0.8)


def test_bundle_id_isolates_entries(cache: VerdictCache) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    old, new = verdict_key(prefix, "sg-old", DIGEST), verdict_key(prefix, "sg-new", DIGEST)
    cache.set(old, verdict(bundle="sg-old"))
    assert cache.get(new) is None


def test_entries_expire_after_ttl(cache: VerdictCache) -> None:
    cache.ttl_seconds = 0.2
    if isinstance(cache, RedisCache):
        cache._ttl_ms = 200
    k = key()
    cache.set(k, verdict())
    assert cache.get(k) is not None
    time.sleep(0.35)
    assert cache.get(k) is None


def test_concurrent_use_is_safe(cache: VerdictCache) -> None:
    ks = [key(i) for i in range(50)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(50):
                k = ks[(i + offset) % 50]
                cache.set(k, verdict((i % 10) / 10))
                cache.get_many([k, ks[i]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(v is not None for v in cache.get_many(ks))


# --- keys and what is stored ---------------------------------------------------------


def test_key_is_prefix_bundle_sha256() -> None:
    assert verdict_key("p", "sg-1", DIGEST) == f"p:sg-1:{DIGEST}"
    with pytest.raises(ValueError, match="sha256"):
        verdict_key("p", "sg-1", SECRET_PROMPT)


def test_redis_stores_only_verdict_json(redis_url: str) -> None:
    c = RedisCache(redis_url, ttl_seconds=60, timeout_seconds=1.0)
    k = key(DIGEST)
    c.set(k, verdict())
    raw = redis.Redis.from_url(redis_url).get(k)
    assert raw is not None
    stored = json.loads(raw)
    assert set(stored) == {
        "score",
        "unsafe",
        "category",
        "category_scores",
        "threshold",
        "bundle_id",
        "cascade_exit",
        "category_unsure",
    }
    assert 0 < redis.Redis.from_url(redis_url).pttl(k) <= 60_000
    c.close()


def test_make_cache_picks_backend(redis_url: str) -> None:
    assert isinstance(make_cache(None, ttl_seconds=1, max_entries=3), MemoryCache)
    c = make_cache(redis_url, ttl_seconds=1, max_entries=3)
    assert isinstance(c, RedisCache)
    c.close()


# --- backend-specific ----------------------------------------------------------------


def test_memory_evicts_least_recently_used() -> None:
    c = MemoryCache(max_entries=2, ttl_seconds=60)
    a, b, d = key(1), key(2), key(3)
    c.set(a, verdict())
    c.set(b, verdict())
    assert c.get(a) is not None  # a is now the most recent
    c.set(d, verdict())
    assert c.get(b) is None and c.get(a) is not None and c.get(d) is not None
    assert len(c) == 2


def test_redis_unreachable_is_a_counted_miss_never_an_error() -> None:
    seen: list[str] = []
    c = RedisCache(
        f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60, retry_after_seconds=60, on_error=seen.append
    )
    started = time.perf_counter()
    assert c.get(key()) is None
    c.set(key(), verdict())  # swallowed: the circuit is open, Redis is not even tried
    assert c.get_many([key(), key()]) == [None, None]
    assert time.perf_counter() - started < 1.0
    assert c.errors == 1 and seen == ["get"]
    assert not c.available
    c.close()


def test_redis_corrupt_value_is_a_miss(redis_url: str) -> None:
    c = RedisCache(redis_url, ttl_seconds=60, timeout_seconds=1.0)
    k = key()
    redis.Redis.from_url(redis_url).set(k, b"not json", px=60_000)
    assert c.get(k) is None and c.errors == 1
    c.close()


def test_redis_used_again_once_back() -> None:
    try:
        server = RedisProcess().start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    c = RedisCache(server.url, ttl_seconds=60, timeout_seconds=0.2, retry_after_seconds=0.2)
    try:
        k = key()
        c.set(k, verdict())
        assert c.get(k) is not None
        server.stop()
        assert c.get(k) is None and c.errors >= 1 and not c.available
        server.start()  # same port, empty (no persistence)
        time.sleep(0.25)
        assert c.available
        c.set(k, verdict(0.6))
        got = c.get(k)
        assert got is not None and got.score == pytest.approx(0.6)
    finally:
        c.close()
        server.close()


def test_slow_redis_costs_one_timeout_then_is_bypassed() -> None:
    """A Redis that accepts but never answers (overloaded, half-dead): bounded by the socket timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def black_hole() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=black_hole, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    c = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_seconds=60, timeout_seconds=0.1, retry_after_seconds=60)
    try:
        started = time.perf_counter()
        assert c.get(key()) is None
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(20):
            assert c.get(key()) is None
            c.set(key(), verdict())
        rest = time.perf_counter() - started
        assert first < 1.0 and rest < 0.1
        assert c.errors == 1
    finally:
        stop.set()
        thread.join(2)
        c.close()
        for s in accepted:
            s.close()
        listener.close()
