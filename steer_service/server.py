"""Process wiring: gRPC server first (health NOT_SERVING), then model and bundle, then SERVING.

Starting the listener before the (slow) model load lets Kubernetes probes
connect and see NOT_SERVING instead of a refused connection; Generate answers
``UNAVAILABLE`` until the engine runs. On SIGTERM the shared shutdown helper
flips health, drains in-flight streams for ``--grace-seconds`` (cancelling the
rest, which frees their rows), then the engine stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
from collections.abc import Callable

import grpc

from steer_service.config import SteerConfig
from steer_service.service import SteerService
from steer_service.servicer import SteererServicer
from steerguard.bundle import DEFAULT_BUNDLE_DIR
from steerguard.errors import SteerguardError
from steerguard.grpc_common.addresses import host_port
from steerguard.grpc_common.heap import freeze_startup_objects
from steerguard.grpc_common.metrics import start_metrics_server
from steerguard.grpc_common.reload import BundleReload
from steerguard.grpc_common.server import GrpcServer, ServerOptions, build_server
from steerguard.grpc_common.shutdown import serve_until_signal
from steerguard.logs import configure_logging, get_logger
from steerguard.v1 import steer_pb2, steer_pb2_grpc

log = get_logger("steer_service")

SERVICE_NAME = steer_pb2.DESCRIPTOR.services_by_name["Steerer"].full_name


class ServiceSlot:
    """Holds the core once it is loaded (the servicer reads it on every RPC)."""

    def __init__(self, service: SteerService | None = None) -> None:
        self._service = service
        self._lock = threading.Lock()

    def get(self) -> SteerService | None:
        return self._service

    def set(self, service: SteerService) -> SteerService | None:
        """Serve ``service`` from now on; returns the one it replaces."""
        with self._lock:
            old, self._service = self._service, service
        return old


def server_options(options: ServerOptions, config: SteerConfig) -> ServerOptions:
    """Enough RPC threads for every running row, every queued one and a few unary calls."""
    workers = max(options.max_workers, config.max_batch_size + config.max_queue + 8)
    return dataclasses.replace(options, max_workers=workers)


def create_server(addr: str, options: ServerOptions, slot: ServiceSlot) -> GrpcServer:
    def add(server: grpc.Server) -> None:
        steer_pb2_grpc.add_SteererServicer_to_server(SteererServicer(slot.get), server)

    return build_server(addr, options, service_names=[SERVICE_NAME], add_servicers=add)


def serve_in_process(
    service: SteerService, options: ServerOptions | None = None, addr: str = "127.0.0.1:0"
) -> GrpcServer:
    """A started, SERVING server around an already-started core (tests, benchmarks)."""
    opts = server_options(options or ServerOptions(), service.config)
    server = create_server(addr, opts, ServiceSlot(service)).start()
    server.set_serving()
    return server


def run(args: argparse.Namespace) -> int:
    """``steerguard serve steer``."""
    from steerguard.bundle import Bundle
    from steerguard.model.host import ModelHost

    configure_logging(args.log_format, args.log_level)
    try:
        config = SteerConfig.from_args(args)
    except ValueError as exc:
        log.error("bad configuration", reason=str(exc))
        return 2
    options = server_options(ServerOptions.from_args(args), config)
    slot = ServiceSlot()
    server = create_server(host_port(args.host, args.port), options, slot).start()
    log.info("listening", port=server.port, tls=bool(options.tls_cert), auth=bool(options.auth_token))
    start_metrics_server(args.metrics_port)
    try:
        host = ModelHost.load(args.model, threads=args.threads, device=args.device)
        bundle = Bundle.load(args.bundle)
        bundle.verify_model(host.identity)
    except SteerguardError as exc:
        log.error("cannot start", reason=exc.reason)
        server.stop(0)
        return 2
    service = SteerService(host, bundle, config).start()
    slot.set(service)
    frozen = freeze_startup_objects()
    server.set_serving()
    log.info(
        "serving",
        bundle_id=bundle.bundle_id,
        model=host.identity.name,
        engine=config.engine,
        max_batch_size=config.max_batch_size,
        max_new_tokens_cap=config.max_new_tokens_cap,
        frozen_objects=frozen,
    )
    folder = bundle.path or DEFAULT_BUNDLE_DIR
    reload = BundleReload(folder, host, lambda b: SteerService(host, b, config).start(), _swapper(slot))

    def stop() -> None:
        current = slot.get()
        if current is not None:
            current.close()

    serve_until_signal(
        server, options.grace_seconds, on_stop=stop, on_reload=reload.check, reload_every_s=args.bundle_poll_s
    )
    return 0


def _swapper(slot: ServiceSlot) -> Callable[[SteerService], str | None]:
    """Serve a new bundle's service; the old one finishes its calls, then stops."""

    def swap(new: SteerService) -> str | None:
        old = slot.set(new)
        if old is None:
            return None
        old.retire()
        return old.bundle.bundle_id

    return swap
