"""The verdict cache on a Redis Cluster: a request's keys spread over nodes, read per node.

Three masters formed by the test (``redis-server --cluster-enabled`` plus
``redis-cli --cluster create``); the cache on a ``redis+cluster://`` URL.
A plain ``MGET`` over keys in different slots is refused by a cluster
(CROSSSLOT), so this checks the cache reads them per node, that keys really
land on several nodes, and that the classifier core caches through it.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from classifier_service.cache import RedisCache
from classifier_service.core import ClassifierCore, CoreConfig
from devstack.redis import ClusterSetup
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.verdict import Verdict

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(redis_cluster: ClusterSetup) -> ClusterSetup:
    return redis_cluster


def test_keys_in_many_slots_are_written_and_read_back(cluster: ClusterSetup) -> None:
    cache = RedisCache(cluster.url, ttl_seconds=60, timeout_seconds=0.5)
    try:
        assert cache.where.startswith("cluster via ")
        keys = [f"steerguard:verdict:test:{uuid.uuid4().hex}" for _ in range(40)]
        cache.set_many({k: Verdict(i / 100, False, "", {}, 0.5, "b") for i, k in enumerate(keys)})
        got = cache.get_many(keys)
        assert [v.score if v else None for v in got] == pytest.approx([i / 100 for i in range(40)])
        assert all(v is not None and v.cached for v in got)
        mine = set(keys)
        holders = [  # SCAN reads a node's own keys (a key lookup would answer MOVED)
            sum(k.decode() in mine for k in redis.Redis(host="127.0.0.1", port=n.port).scan_iter(count=1000))
            for n in cluster.nodes
        ]
        assert sum(holders) == 40 and sum(h > 0 for h in holders) >= 2, holders  # spread over nodes
        assert cache.errors == 0
    finally:
        cache.close()


def test_the_classifier_caches_through_the_cluster(
    cluster: ClusterSetup, tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    cache = RedisCache(cluster.url, ttl_seconds=60, timeout_seconds=0.5)
    core = ClassifierCore(tiny_host, tiny_bundle, cache, CoreConfig(max_batch_wait_ms=1.0))
    try:
        prompts = [normalise_request(f"tell me about rivers {uuid.uuid4().hex}") for _ in range(6)]
        first = core.classify(prompts)
        again = core.classify(prompts)
        assert not any(v.cached for v in first) and all(v.cached for v in again)
        assert [v.score for v in again] == pytest.approx([v.score for v in first])
        assert cache.errors == 0
    finally:
        core.close()


def test_a_cluster_that_is_down_at_start_up_fails_no_classification(
    tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    from devstack.net import free_port

    cache = RedisCache(f"redis+cluster://127.0.0.1:{free_port()}", ttl_seconds=60, timeout_seconds=0.1)
    core = ClassifierCore(tiny_host, tiny_bundle, cache, CoreConfig(max_batch_wait_ms=1.0))
    try:
        (verdict,) = core.classify([normalise_request("hello there")])
        assert not verdict.cached and cache.errors >= 1 and cache.client is None
    finally:
        core.close()
