"""A throwaway ``redis-server`` process for tests and benchmarks.

Tests that stop Redis mid-run must never stop the machine's Redis, so they
start their own on a free port with persistence off, and can stop and restart
it on the same port to show the service recovering.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from devstack.net import free_port

__all__ = ["RedisProcess", "free_port", "ping", "server_argv"]


def server_argv(binary: str, host: str, port: int) -> list[str]:
    """``redis-server`` on ``host:port`` with persistence off: the one way this repository starts it."""
    return [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]


def ping(url: str, timeout: float = 0.2) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class RedisProcess:
    """``redis-server --port P --save '' --appendonly no``, started and stopped by us."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.proc = subprocess.Popen(
            server_argv(self.binary, "127.0.0.1", self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
