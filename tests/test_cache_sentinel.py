"""The verdict cache on Sentinel-managed Redis: the master killed mid-run fails no classification.

A master, a replica and a Sentinel started by the test (``redis-server
--sentinel``), the classifier core on a ``redis+sentinel://`` URL, and
classifications running throughout. After Sentinel promotes the replica,
verdicts are cached again, on the new master.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from classifier_service.cache import RedisCache
from classifier_service.core import ClassifierCore, CoreConfig
from devstack.redis import SentinelSetup
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost

pytestmark = pytest.mark.redis


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    try:
        setup = SentinelSetup(tmp_path).start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"cannot start redis with a sentinel: {exc}")
    yield setup
    setup.stop()


def test_a_failover_fails_no_classification(
    sentinel: SentinelSetup, tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    cache = RedisCache(sentinel.url, ttl_seconds=300, timeout_seconds=0.2, retry_after_seconds=0.2)
    assert "sentinel" in cache.where and "@" not in cache.where
    core = ClassifierCore(tiny_host, tiny_bundle, cache, CoreConfig(max_batch_wait_ms=1.0))
    errors: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=lambda: None)]  # replaced once the load starts

    def load() -> None:
        while not stop.is_set():
            try:
                core.classify([normalise_request(f"tell me a joke {uuid.uuid4().hex}")])
            except Exception as exc:  # what the test counts: any classification that fails
                errors.append(repr(exc))

    try:
        prompt = normalise_request(f"cached before {uuid.uuid4().hex}")
        core.classify([prompt])
        assert core.classify([prompt])[0].cached  # through the first master
        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        old = sentinel.master.port
        sentinel.master.stop()  # the master dies mid-run
        deadline = time.monotonic() + 30
        while sentinel.master_port() in (old, None) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sentinel.master_port() == sentinel.replica.port, "Sentinel promoted the replica"
        after = normalise_request(f"cached after {uuid.uuid4().hex}")
        cached = False
        while not cached and time.monotonic() < deadline:  # the circuit closes, writes reach the new master
            core.classify([after])
            cached = core.classify([after])[0].cached
            time.sleep(0.1)
        assert cached, "verdicts are cached again on the promoted master"
    finally:
        stop.set()
        for w in workers:
            if w.is_alive():
                w.join(timeout=30)
        core.close()
    assert errors == []
