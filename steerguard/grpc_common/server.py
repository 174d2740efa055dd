"""Build a gRPC server the same way for every steerguard service.

Each service's ``create_server`` calls :func:`build_server` with its servicers;
this adds error mapping, optional bearer auth, optional TLS/mTLS, message size
limits, ``grpc.health.v1`` (NOT_SERVING until the service says it is ready)
and server reflection (so ``grpcurl`` works without proto files), and binds
the address (port 0 picks a free port, which tests use).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from steerguard.errors import SteerguardError
from steerguard.grpc_common.interceptors import AuthInterceptor, ErrorInterceptor
from steerguard.logs import get_logger

log = get_logger("steerguard.grpc")


@dataclass(frozen=True)
class ServerOptions:
    max_message_bytes: int = 4 * 1024 * 1024
    auth_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_workers: int = 64
    grace_seconds: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerOptions:
        return cls(
            max_message_bytes=int(getattr(args, "max_message_bytes", cls.max_message_bytes)),
            auth_token=read_token(getattr(args, "auth_token", None), getattr(args, "auth_token_file", None)),
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
            tls_client_ca=getattr(args, "tls_client_ca", None),
            grace_seconds=float(getattr(args, "grace_seconds", cls.grace_seconds)),
        )


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token from a flag or a file (Kubernetes mounts Secrets as files)."""
    if token:
        return token.strip()
    if token_file:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise SteerguardError(f"cannot read auth token file {token_file}: {exc.strerror}") from exc
        return value or None
    return None


def server_credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    if not options.tls_cert:
        return None
    if not options.tls_key:
        raise SteerguardError("--tls-cert needs --tls-key")
    key = Path(options.tls_key).read_bytes()
    cert = Path(options.tls_cert).read_bytes()
    ca = Path(options.tls_client_ca).read_bytes() if options.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class GrpcServer:
    """A started-or-not server with its health state and graceful stop."""

    def __init__(
        self, server: grpc.Server, port: int, health_servicer: health.HealthServicer, names: Sequence[str]
    ):
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = list(names)
        self._stopped = threading.Event()

    def _set(self, status: int) -> None:
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def set_serving(self) -> None:
        self._set(health_pb2.HealthCheckResponse.SERVING)

    def set_not_serving(self) -> None:
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    def start(self) -> GrpcServer:
        self.server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, stop accepting, let in-flight RPCs finish within ``grace``."""
        self.set_not_serving()
        self.server.stop(grace).wait()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def build_server(
    addr: str,
    options: ServerOptions,
    *,
    service_names: Sequence[str],
    add_servicers: Callable[[grpc.Server], None],
) -> GrpcServer:
    interceptors: list[grpc.ServerInterceptor] = []
    if options.auth_token:
        interceptors.append(AuthInterceptor(options.auth_token))
    interceptors.append(ErrorInterceptor())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.so_reuseport", 0),
            # Close connections after a while so clients re-resolve DNS and spread
            # over pods added by the autoscaler (in-flight RPCs get the grace).
            ("grpc.max_connection_age_ms", 5 * 60 * 1000),
            ("grpc.max_connection_age_grace_ms", 60 * 1000),
        ],
    )
    add_servicers(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    creds = server_credentials(options)
    port = server.add_secure_port(addr, creds) if creds is not None else server.add_insecure_port(addr)
    if port == 0:
        raise SteerguardError(f"cannot bind {addr}")
    out = GrpcServer(server, port, health_servicer, service_names)
    out.set_not_serving()
    return out
