"""The ext_proc gRPC server: the gate wired to a classifier client, health, metrics, policy reloads."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.audit import AuditTrail
from sidecar.exchange import Outcomes
from sidecar.extproc.gate import Gate
from sidecar.extproc.servicer import ExtProcServicer
from sidecar.extproc.settings import ExtProcSettings
from sidecar.grpc_clients import ChannelSettings, ClassifierClient
from sidecar.judge import Judge, RecentVerdicts
from sidecar.metrics import Metrics
from sidecar.policy import Policy
from sidecar.reload import LivePolicy
from sidecar.settings import AuditSettings
from steerguard.logs import configure_logging, get_logger

log = get_logger("steerguard.extproc")
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


@dataclass
class Running:
    """A started ext_proc server and what it owns."""

    server: grpc.aio.Server
    port: int
    live: LivePolicy
    metrics: Metrics
    watch: asyncio.Task[None] | None

    async def stop(self, grace_s: float) -> None:
        if self.watch is not None:
            self.watch.cancel()
        await self.server.stop(grace_s)


async def start(settings: ExtProcSettings, policy: Policy) -> Running:
    """Serve on ``settings.host:port`` (0: a free port, reported in ``Running.port``)."""
    metrics = Metrics()
    live = LivePolicy(policy, settings.policy_file, metrics)
    channel = ChannelSettings(
        address=settings.classifier,
        token=settings.auth_token,
        tls_ca=settings.tls_ca,
        tls_server_name=settings.tls_server_name,
        retry_attempts=settings.grpc_retries,
    )
    outcomes = Outcomes(metrics, AuditTrail(AuditSettings(), metrics))
    memo = RecentVerdicts(settings.verdict_cache_size, settings.verdict_cache_ttl_s)
    judge = Judge(ClassifierClient(channel), outcomes, timeout_s=settings.classify_timeout_s, memo=memo)
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(Gate(live, judge)), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch = None
    if settings.policy_file and settings.policy_poll_s > 0:
        watch = asyncio.create_task(live.watch(settings.policy_poll_s))
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.registry)
    return Running(server, port, live, metrics, watch)


async def _serve(settings: ExtProcSettings, policy: Policy) -> int:
    running = await start(settings, policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.live.reload_now)
    log.info("listening", host=settings.host, port=running.port, classifier=settings.classifier)
    print(json.dumps({"event": "ready", "service": "extproc", "port": running.port}), flush=True)
    await stop.wait()
    log.info("stopping", grace_s=settings.grace_s)
    await running.stop(settings.grace_s)
    return 0


def serve(settings: ExtProcSettings, policy: Policy) -> int:
    """Run until SIGTERM/SIGINT, then drain for up to ``grace_s``."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(_serve(settings, policy))
    except OSError as exc:
        print(f"steerguard serve extproc: {exc}", file=sys.stderr)
        return 2
