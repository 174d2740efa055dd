"""The verdict cache over TLS (``rediss://``): a real ``redis-server`` with a TLS port only.

Certificates are made by the test (``write_test_certs``); the cache's URL
carries the CA through redis-py's own ``ssl_ca_certs`` option. A plain
``redis://`` client on the same port gets nothing (counted misses), so the
round trip really went over TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from classifier_service.cache import RedisCache, verdict_key
from devstack.net import free_port
from steerguard.grpc_common.certs import write_test_certs
from steerguard.verdict import Verdict

pytestmark = pytest.mark.redis


@pytest.fixture()
def tls_url(tmp_path: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    certs = write_test_certs(tmp_path / "certs")
    port = free_port()
    argv = [
        binary,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    argv += [
        "--dir",
        str(tmp_path),
        "--tls-cert-file",
        str(certs.server_cert),
        "--tls-key-file",
        str(certs.server_key),
    ]
    argv += ["--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=0.5).ping():
                    break
            except (redis.RedisError, OSError):
                if process.poll() is not None:
                    pytest.skip("this redis-server was built without TLS")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_verdicts_round_trip_over_tls_and_plain_text_gets_nothing(tls_url: tuple[str, int]) -> None:
    url, port = tls_url
    key = verdict_key("test-tls", "sg-test", "0" * 64)
    cache = RedisCache(url, ttl_seconds=60, timeout_seconds=1.0)
    plain = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_seconds=60, timeout_seconds=0.3)
    try:
        cache.set_many({key: Verdict(0.7, True, "violence", {"violence": 1.0}, 0.5, "sg-test")})
        (got,) = cache.get_many([key])
        assert got is not None and got.cached and got.score == pytest.approx(0.7) and cache.errors == 0
        assert plain.get_many([key]) == [None] and plain.errors >= 1
    finally:
        cache.close()
        plain.close()
