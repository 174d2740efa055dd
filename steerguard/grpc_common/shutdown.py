"""Graceful shutdown on SIGTERM/SIGINT.

Kubernetes sends SIGTERM, waits ``terminationGracePeriodSeconds``, then kills.
We flip health to NOT_SERVING first (readiness fails, endpoints are removed),
stop accepting new RPCs, and give in-flight ones ``grace`` seconds to finish.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from steerguard.grpc_common.server import GrpcServer
from steerguard.logs import get_logger

log = get_logger("steerguard.shutdown")


def serve_until_signal(server: GrpcServer, grace: float, on_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM/SIGINT, then drain and stop (``on_stop`` runs after)."""
    requested = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown requested", signal=signal.Signals(signum).name, grace_seconds=grace)
        requested.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not requested.wait(0.5):
            pass
        server.stop(grace)
        if on_stop is not None:
            on_stop()
        log.info("stopped")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
