"""Graceful shutdown on SIGTERM/SIGINT.

Kubernetes sends SIGTERM, waits ``terminationGracePeriodSeconds``, then kills.
We flip health to NOT_SERVING first (readiness fails, endpoints are removed),
stop accepting new RPCs, and give in-flight ones ``grace`` seconds to finish.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from steerguard.grpc_common.server import GrpcServer
from steerguard.logs import get_logger

log = get_logger("steerguard.shutdown")


def serve_until_signal(
    server: GrpcServer,
    grace: float,
    on_stop: Callable[[], None] | None = None,
    on_reload: Callable[[], object] | None = None,
    reload_every_s: float = 0.0,
) -> None:
    """Block until SIGTERM/SIGINT, then drain and stop (``on_stop`` runs after).

    ``on_reload`` runs on this thread on SIGHUP and, with ``reload_every_s``,
    that often (a config or bundle watch); never inside the signal handler.
    """
    requested, hup = threading.Event(), threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown requested", signal=signal.Signals(signum).name, grace_seconds=grace)
        requested.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    if on_reload is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: hup.set())
    next_check = time.monotonic() + reload_every_s
    try:
        while not requested.wait(0.5):
            due = reload_every_s > 0 and time.monotonic() >= next_check
            if on_reload is not None and (hup.is_set() or due):
                hup.clear()
                on_reload()
                next_check = time.monotonic() + reload_every_s
        server.stop(grace)
        if on_stop is not None:
            on_stop()
        log.info("stopped")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
