"""Ports and readiness checks for processes the dev stack, tests and benchmarks start.

The one ``free_port`` of the repository; ``host_port`` is the product's own
(:func:`steerguard.grpc_common.addresses.host_port`), re-exported here for the
dev tools.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from steerguard.grpc_common.addresses import host_port

__all__ = ["free_port", "grpc_serving", "host_port", "http_ok", "port_in_use", "redis_ready"]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(_family(host)) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def redis_ready(host: str, port: int) -> bool:
    """A Redis answers PING (spoken raw, so the check needs no client library)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def grpc_serving(address: str) -> bool:
    """The service answers its health check with SERVING (it has loaded its model)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
