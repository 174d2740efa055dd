"""The classifier with a real Redis cache, which is stopped and restarted while clients keep calling.

Redis here is a ``redis-server`` the test starts on a free port (never the
machine's). No request may fail while it is down, the failures must be
counted, and once it is back the service must use it again.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from classifier_service.cache import RedisCache
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.metrics import CACHE_ERRORS
from classifier_service.server import create_server
from classifier_service.servicer import ClassifierServicer
from devstack.redis import RedisProcess
from steerguard.bundle import Bundle
from steerguard.errors import InvalidInput
from steerguard.model.host import ModelHost
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc

pytestmark = pytest.mark.redis


@pytest.fixture()
def stack(
    redis_proc: RedisProcess, tiny_model_dir: Path, tiny_bundle: Bundle
) -> Iterator[tuple[int, ClassifierCore]]:
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)
    cache = RedisCache(
        redis_proc.url,
        ttl_seconds=300,
        timeout_seconds=0.05,
        retry_after_seconds=0.3,
        on_error=lambda op: CACHE_ERRORS.labels(backend="redis", op=op).inc(),
    )
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    core = ClassifierCore(host, tiny_bundle, cache, CoreConfig(cache_prefix=prefix, max_batch_wait_ms=1.0))
    server = create_server("127.0.0.1:0", ClassifierServicer(core)).start()
    server.set_serving()
    yield server.port, core
    server.stop(0)
    core.close()


def test_keys_and_values_in_redis(stack: tuple[int, ClassifierCore], redis_proc: RedisProcess) -> None:
    port, core = stack
    prompt = f"a prompt that must never reach redis {uuid.uuid4().hex}"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = classifier_pb2_grpc.ClassifierStub(ch)
        first = stub.Classify(classifier_pb2.ClassifyRequest(prompt=prompt))
        assert stub.Classify(classifier_pb2.ClassifyRequest(prompt=prompt)).cached and not first.cached
    client = redis.Redis.from_url(redis_proc.url, decode_responses=False)
    keys = [
        str(k, "utf-8") if isinstance(k, bytes) else k for k in client.keys(f"{core.config.cache_prefix}:*")
    ]
    assert len(keys) == 1
    prefix, bundle_id, digest = keys[0].split(":")
    assert bundle_id == core.bundle_id and len(digest) == 64
    dump = repr([client.get(k) for k in client.keys("*")])
    assert prompt not in dump and "never reach" not in dump


def test_no_request_fails_while_redis_stops_and_comes_back(
    stack: tuple[int, ClassifierCore], redis_proc: RedisProcess
) -> None:
    port, core = stack
    assert core.cache is not None
    prompts = [f"question {i} {uuid.uuid4().hex[:6]}" for i in range(12)]
    phase = ["up"]
    results: list[tuple[str, bool]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            while not stop.is_set():
                try:
                    v = stub.Classify(classifier_pb2.ClassifyRequest(prompt=rng.choice(prompts)), timeout=10)
                    results.append((phase[0], v.cached))
                except grpc.RpcError as exc:
                    failures.append(f"{phase[0]}: {exc.code()} {exc.details()}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        phase[0] = "down"
        redis_proc.stop()
        time.sleep(1.0)
        phase[0] = "back"
        redis_proc.start()  # same port, empty
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert failures == []
    by_phase = {p: [cached for ph, cached in results if ph == p] for p in ("up", "down", "back")}
    assert all(by_phase.values()), {p: len(v) for p, v in by_phase.items()}
    assert any(by_phase["up"])  # the cache served hits before the outage
    assert core.cache.errors >= 1  # the outage was counted
    assert any(by_phase["back"][len(by_phase["back"]) // 2 :])  # and Redis serves hits again after it
    assert redis.Redis.from_url(redis_proc.url).dbsize() > 0


def test_with_a_secret_keys_are_keyed_hashes(
    redis_proc: RedisProcess, tiny_model_dir: Path, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    """Reading Redis is not enough to confirm a guessed prompt: its sha256 is not in any key."""
    import hashlib
    import hmac

    from classifier_service.app import read_secret
    from steerguard.model.chat import normalise_request

    secret_file = tmp_path / "cache-key"
    secret_file.write_text("k3y-from-a-secret\n")
    secret = read_secret(str(secret_file))
    assert secret == b"k3y-from-a-secret"
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.classifier_layers)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = CoreConfig(cache_prefix=prefix, max_batch_wait_ms=1.0, cache_key_secret=secret)
    core = ClassifierCore(host, tiny_bundle, RedisCache(redis_proc.url, ttl_seconds=300), config)
    prompt = f"guess me {uuid.uuid4().hex}"
    try:
        (first,) = core.classify([normalise_request(prompt)])
        (again,) = core.classify([normalise_request(prompt)])
    finally:
        core.close()
    assert again.cached and not first.cached
    (key,) = [k.decode() for k in redis.Redis.from_url(redis_proc.url).keys(f"{prefix}:*")]
    digest = normalise_request(prompt).digest()
    assert key.split(":")[-1] != digest  # a bare sha256 of the guess finds nothing
    assert key.split(":")[-1] == hmac.new(secret, digest.encode(), hashlib.sha256).hexdigest()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidInput, match="is empty"):
        read_secret(str(empty))
