"""A throwaway ``redis-server`` process for tests and benchmarks.

Tests that stop Redis mid-run must never stop the machine's Redis, so they
start their own on a free port with persistence off, and can stop and restart
it on the same port to show the service recovering.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from devstack.net import free_port

__all__ = ["ClusterSetup", "RedisProcess", "SentinelSetup", "free_port", "ping", "server_argv"]


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

    def __init__(
        self, port: int | None = None, binary: str | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = found
        self.port = port or free_port()
        self.extra = extra  # e.g. ("--replicaof", "127.0.0.1", "6380")
        self.proc: subprocess.Popen[bytes] | None = None
        # Replication writes an RDB file even with saving off: keep it out of the caller's cwd.
        self.workdir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="steerguard-redis-")
        self.proc = subprocess.Popen(
            [*server_argv(self.binary, "127.0.0.1", self.port), "--dir", self.workdir, *self.extra],
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

    def close(self) -> None:
        """Stop the server and remove its working folder (``stop`` keeps it for a restart)."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelSetup:
    """A master, one replica and one Sentinel (quorum 1, quick failover): managed Redis in miniature.

    The Sentinel is ``redis-server CONF --sentinel`` (what ``redis-sentinel`` is), with its
    config in ``folder`` (Sentinel rewrites it). ``url`` is the cache's
    ``redis+sentinel://`` URL for the service ``SERVICE``.
    """

    SERVICE = "steerguard"

    def __init__(self, folder: Path) -> None:
        self.master = RedisProcess()
        self.replica = RedisProcess(extra=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.port = free_port()
        self.conf = folder / "sentinel.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"

    def start(self, timeout: float = 20.0) -> SentinelSetup:
        self.master.start()
        self.replica.start()
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
            f"sentinel failover-timeout {self.SERVICE} 3000\n"
        )
        self.proc = subprocess.Popen(
            [self.master.binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while self.master_port() != self.master.port or not self._replicated():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis sentinel setup did not come up")
            time.sleep(0.1)
        return self

    def master_port(self) -> int | None:
        """The port the Sentinel names as the master now (None: it cannot be asked)."""
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, decode_responses=True)
            try:
                found = client.execute_command("SENTINEL", "get-master-addr-by-name", self.SERVICE)
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return None
        return int(found[1]) if found else None

    def _replicated(self) -> bool:
        try:
            info = redis.Redis(host="127.0.0.1", port=self.replica.port, socket_timeout=0.5).info(
                "replication"
            )
        except (redis.RedisError, OSError):
            return False
        return bool(info.get("master_link_status") == "up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
            self.proc = None
        self.replica.close()
        self.master.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000, Redis's rule) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ClusterSetup:
    """A Redis Cluster of three masters (no replicas), formed with ``redis-cli --cluster create``.

    ``url`` is the cache's ``redis+cluster://`` URL naming every node as a startup node.
    """

    def __init__(self, masters: int = 3) -> None:
        extra = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
        self.nodes = [RedisProcess(port=_cluster_port(), extra=extra) for _ in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> ClusterSetup:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        done = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(
                f"redis-cli --cluster create failed: {done.stdout[-500:]} {done.stderr[-500:]}"
            )
        deadline = time.monotonic() + timeout
        while not all(self._ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    @staticmethod
    def _ok(node: RedisProcess) -> bool:
        try:
            info = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=0.5).cluster("info")
        except (redis.RedisError, OSError):
            return False
        return bool(info.get("cluster_state") == "ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.close()
